"""The command line, on top of everything else: nothing in the library imports it."""
from .main import main

__all__ = ["main"]
