"""What every stage shares: the one error type, atomic file writes, figures written without
pyplot's global state, and the CPU allocator setting."""
