"""The ``p2p-copy`` command: argument parsing and the commands (commands), the demo (demo),
process tuning (tuning)."""

from .commands import console_main, main

__all__ = ["console_main", "main"]
