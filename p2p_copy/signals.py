"""Signal handlers on any event loop: the CLI's cancel and the relay's drain.

asyncio's ``loop.add_signal_handler`` exists only on its Unix loops; Windows' default
(Proactor) loop raises NotImplementedError. There ``signal.signal`` still works in the main
thread, and the loop wakes for it (it sets the signal wake-up fd), so the handler is run on
the loop through ``call_soon_threadsafe``: the same effect, chosen by what the loop can do,
not by the system's name. Imported by cli/ and relay/ alike: it knows neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Callable, Iterator, Mapping
from types import FrameType

__all__ = ["INTERRUPTS", "DRAIN", "on_signals"]

#: What the console's interrupt keys send: Ctrl-C everywhere, Ctrl-Break on Windows.
INTERRUPTS: tuple[int, ...] = tuple(
    s for s in (signal.SIGINT, getattr(signal, "SIGBREAK", None)) if s is not None)

#: What asks a relay to drain: SIGTERM (what service managers send), and Ctrl-Break where
#: it exists: Windows delivers no SIGTERM from another process, and Ctrl-C stops at once.
DRAIN: tuple[int, ...] = tuple(
    s for s in (signal.SIGTERM, getattr(signal, "SIGBREAK", None)) if s is not None)


@contextlib.contextmanager
def on_signals(handlers: Mapping[int, Callable[[], object]]) -> Iterator[None]:
    """Inside the block, each signal runs its handler on the running loop; after it, the
    signal is handled as before. A signal that cannot be caught here (outside the main
    thread, or unknown to the system) is left as it was."""
    loop = asyncio.get_running_loop()
    undo: list[Callable[[], object]] = []
    try:
        for signum, handler in handlers.items():
            try:
                loop.add_signal_handler(signum, handler)
            except NotImplementedError:  # Windows' Proactor loop
                restore = _catch(loop, signum, handler)
                if restore is not None:
                    undo.append(restore)
            except (RuntimeError, ValueError):  # not the main thread; a signal not here
                pass
            else:
                undo.append(functools.partial(loop.remove_signal_handler, signum))
        yield
    finally:
        for step in reversed(undo):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, OSError):
                step()


def _catch(loop: asyncio.AbstractEventLoop, signum: int,
           handler: Callable[[], object]) -> Callable[[], object] | None:
    """signal.signal's way: the handler runs on ``loop``; returns what puts the previous
    handling back, or None if the signal cannot be caught here."""

    def caught(_signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(handler)

    try:
        previous = signal.signal(signum, caught)
    except (ValueError, OSError):  # not the main thread; a signal not here
        return None
    # None: a handler set outside Python, which cannot be put back; the default is closest.
    return functools.partial(signal.signal, signum,
                             signal.SIG_DFL if previous is None else previous)
