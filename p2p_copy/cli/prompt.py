"""Asking for the code on a terminal, with Tab completing the words of generated codes."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..errors import UsageError
from ..protocol.codes import wordlist

__all__ = ["ask_code", "completer"]

PROMPT = "Enter the code the sender shows (Tab completes its words): "


def completer(words: tuple[str, ...]) -> Callable[[str, int], str | None]:
    """A readline completer: the word after the last ``-`` from ``words``."""

    def complete(text: str, state: int) -> str | None:
        head, dash, last = text.rpartition("-")
        if not dash:  # the room number comes first: nothing to complete
            return None
        last = last.lower()
        matches = [f"{head}-{word}" for word in words if word.startswith(last)]
        return matches[state] if state < len(matches) else None

    return complete


def ask_code() -> str:
    """The code typed by the person at the terminal; UsageError if none was typed.

    With readline (and standard output on the terminal, where readline draws) Tab
    completes words; otherwise the question goes to stderr, which keeps a piped standard
    output (``--stdout``) clean.
    """
    try:
        if sys.stdout.isatty():
            _complete_words()
            line = input(PROMPT)
        else:
            sys.stderr.write(PROMPT)
            sys.stderr.flush()
            line = sys.stdin.readline()
    except EOFError:
        line = ""
    if not line.strip():
        print(file=sys.stderr)
        raise UsageError("No code given: type the code the sender shows.")
    return line.strip()


def _complete_words() -> None:
    """Tab completes the wordlist's words where readline exists (not on Windows, where the
    question works without it)."""
    if sys.platform == "win32":
        return
    try:
        import readline
    except ImportError:
        return
    readline.set_completer(completer(wordlist()))
    readline.set_completer_delims(" \t\n")
    # macOS's Python links libedit, which spells the binding its own way.
    libedit = "libedit" in (readline.__doc__ or "")
    readline.parse_and_bind("bind ^I rl_complete" if libedit else "tab: complete")
