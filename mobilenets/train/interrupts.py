"""Stop signals during a training run: SIGINT (Ctrl-C) and SIGTERM (`timeout`, docker, Slurm,
systemd) end a run at a step boundary, where its checkpoint resumes exactly."""
from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignal(KeyboardInterrupt):
    """SIGINT or SIGTERM that stops a run at once: during start-up, or a second one."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopAtBoundary(Exception):
    """A stop signal noted during a step, acted on once the step is complete."""


class StopSignals:
    """SIGINT and SIGTERM handlers for the span of a run; the previous ones come back after it.
    mode "raise" (start-up): stop at once with StopSignal. "defer" (the loop): note the first
    signal for the next step boundary, stop at once on a second. "ignore" (the last writes):
    note it and let them finish."""

    def __init__(self):
        self.mode, self.received, self._previous = "raise", None, {}

    def __enter__(self) -> "StopSignals":
        # Only the main thread may set handlers; elsewhere the caller's stay in charge. A signal
        # the process was started to ignore (a shell's background job ignores SIGINT) stays ignored.
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def _handle(self, signum, frame) -> None:
        if self.mode == "ignore" or (self.mode == "defer" and self.received is None):
            self.received = self.received or signum
            return
        raise StopSignal(signum)
