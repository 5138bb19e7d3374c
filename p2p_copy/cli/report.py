"""What the command line tells the person at the end: the receive line, the summary, what
a cancelled or failed receive kept on disk."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TextIO, cast
from urllib.parse import urlsplit

from ..display.progress import Progress, code_shown_elsewhere, human_size
from ..protocol.paths import display_name
from ..results import TransferResult
from .config import Relay

__all__ = ["Tally", "receive_lines", "summary", "kept_partial", "shown_path", "shell_word"]

#: The variable the other side may set its relay token in (commands.RELAY_TOKEN_ENV).
_TOKEN_ENV = "P2P_COPY_RELAY_TOKEN"

#: This system's way of writing paths (tests put ntpath here to see what Windows shows).
_PATHS = os.path


def shown_path(path: str | os.PathLike[str], quoted: bool = False) -> str:
    """A local path, or a name from the transfer (always '/'-separated) that lands here,
    as this system writes paths: with its separator, escaped for the terminal
    (display_name), in single quotes if ``quoted``. Never repr(): it doubles every
    backslash of a Windows path."""
    text = os.fspath(path)
    if _PATHS.altsep:
        text = text.replace(_PATHS.altsep, _PATHS.sep)
    text = display_name(text)
    return f"'{text}'" if quoted else text


def _windows() -> bool:
    return _PATHS.sep == "\\"


def shell_word(text: str) -> str:
    """``text`` as one argument on this system's command line: POSIX shell quoting, or on
    Windows the quoting that cmd and PowerShell both read (double quotes where needed)."""
    return subprocess.list2cmdline([text]) if _windows() else shlex.quote(text)


def receive_lines(relay: Relay, code: str, command: str = "receive") -> tuple[list[str], str]:
    """What to run on the other machine, and the one line a QR code should carry.

    The short form ``p2p-copy receive CODE`` works only where the relay is the default
    too, which this machine cannot know. So the short form comes first only when the
    relay was a default here (likely the same set-up there: a team's config file), and
    the whole line is given too; a relay typed here gets the whole line only. The whole
    line uses the positional relay that every p2p-copy version understands, with
    ``--cafile`` as an absolute path (right on this machine and on a shared file system)
    or the pinned certificate's ``--fingerprint``. The token itself is never printed: the
    line says where to put it. A relay served here (--serve) is given by the address the
    other side uses, and ``command`` is "send" when the receiver serves it.
    """
    served = relay.served
    url = served.public_url if served is not None else relay.url
    cafile = relay.cafile and shown_path(_PATHS.abspath(relay.cafile))
    trust = f" --cafile {shell_word(cafile)}" if cafile else ""
    if relay.fingerprint:
        trust = f" --fingerprint {shell_word(relay.fingerprint)}"
    whole = f"p2p-copy {command}{trust} {shell_word(url)} {shell_word(code)}"
    if command == "send":
        whole += " FILE..."
    lines = [f"Code: {code}"]
    # A pinned certificate must travel with the line, so the short form never stands alone.
    if relay.is_default and not relay.fingerprint:
        short = f"p2p-copy receive {shell_word(code)}"
        lines += [f"On the other machine run: {short}",
                  f"  (if its default relay is not {display_name(relay.url)}: "
                  f"{display_name(whole)})"]
    else:
        short = whole
        lines.append(f"On the other machine run: {display_name(whole)}")
    if served is not None and served.guessed:
        host = urlsplit(url).hostname
        lines.append(f"  ({display_name(str(host))} is this machine's name: if the other "
                     "machine cannot reach it by that name, use an address it can reach.)")
    if relay.token:
        lines.append(f"  The relay needs its access token there too: ${_TOKEN_ENV}, "
                     "--relay-token, or relay_token in the config file.")
    return lines, short


class Tally:
    """Wraps a display: shows the receive line when the code is known and counts what
    crossed (``advance``) apart from what was already there (the first ``resumed``)."""

    def __init__(self, display: Progress, relay: Relay | None = None, qr: bool = False,
                 stream: IO[str] | None = None) -> None:
        self._display = display
        self._relay = relay
        if relay is not None:  # showing_code() prints the lines for the other side
            code_shown_elsewhere(display)
        self._qr = qr
        self._stream = stream or sys.stderr
        self.crossed = 0
        self.already = 0

    def display(self) -> Progress:
        return cast(Progress, self)

    def showing_code(self, server: str, code: str) -> None:
        if self._relay is not None:
            lines, short = receive_lines(self._relay, display_name(code))
            print("\n".join(lines), file=self._stream, flush=True)
            if self._qr:
                import segno

                segno.make(short).terminal(out=cast(TextIO, self._stream), compact=True)
                self._stream.flush()
        self._display.showing_code(server, code)

    def advance(self, nbytes: int) -> None:
        self.crossed += nbytes
        self._display.advance(nbytes)

    def resumed(self, bytes_done: int) -> None:
        # The first report is what earlier runs left; later ones (after a reconnect in
        # this run) include bytes that crossed now and were counted by advance().
        if self.crossed == 0:
            self.already = bytes_done
        _optional(self._display, "resumed", bytes_done)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._display, name)


def _optional(display: Any, name: str, *args: object) -> None:
    method: Callable[..., object] | None = getattr(display, name, None)
    if method is not None:
        method(*args)


def _names(result: TransferResult, shown: int = 3) -> str:
    """The top-level names of what moved, folders with a trailing separator."""
    tops: dict[str, None] = {}
    for file in result.files:
        top, slash, _ = file.path.partition("/")
        tops.setdefault(shown_path(top + slash), None)
    names = list(tops)
    text = ", ".join(names[:shown])
    if len(names) > shown:
        text += f" and {len(names) - shown:,} more"
    return text


def summary(result: TransferResult, tally: Tally, where: str | None) -> str:
    """One line: what arrived (or left), where, what was already there, the real rate."""
    verb = "Sent" if result.role == "sender" else "Received"
    line = f"{verb} {len(result.files)} file(s), {human_size(result.bytes)}"
    if where is not None:
        line += f", into {shown_path(where)}"
    names = _names(result)
    if names:
        line += f": {names}"
    if tally.already:
        there = "at the receiver" if result.role == "sender" else "here"
        line += f" ({human_size(tally.already)} already {there}: resumed or skipped)"
    rate = tally.crossed / result.duration if result.duration > 0 else 0.0
    line += f". {human_size(tally.crossed)} crossed in {result.duration:.1f} s"
    if tally.crossed:
        line += f" ({human_size(rate)}/s)"
    return line + "."


#: Entries kept_partial looks at before it stops counting (a huge --out stays quick).
SCAN_LIMIT = 100_000


def kept_partial(dest: str) -> str | None:
    """After a receive into ``dest`` stopped: what partial data stays there, and how to go
    on or discard it; None if nothing does."""
    from ..storage.destination import TEMP_SUFFIX

    total = count = seen = 0
    for folder, dirs, files in os.walk(dest):
        seen += len(dirs) + len(files)
        for name in files:
            if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                count += 1
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except OSError:
                    pass
        if seen > SCAN_LIMIT:
            break
    if not count:
        return None
    return (f"Kept {human_size(total)} of partial data in {shown_path(Path(dest).resolve())} "
            f"({count:,} hidden '*{TEMP_SUFFIX}' file(s)): run the same receive again to "
            f"continue where it stopped, or discard it with: {_discard_command(dest)}")


def _discard_command(dest: str) -> str:
    """The command that deletes the part files and sidecars a stopped receive kept in
    ``dest``: find(1), or PowerShell on Windows (cmd's wildcards also match 8.3 names)."""
    from ..storage.destination import SIDECAR_SUFFIX, TEMP_SUFFIX

    where = shown_path(Path(dest).resolve())
    if _windows():
        where = where.replace("'", "''")  # PowerShell's quoting inside '...'
        return (f"Get-ChildItem -LiteralPath '{where}' -Recurse -Force -File | Where-Object "
                f"{{ $_.Name -like '.*{TEMP_SUFFIX}' -or $_.Name -like '.*{SIDECAR_SUFFIX}' }} "
                "| Remove-Item -Force")
    return (f"find {shell_word(where)} -name '.*{TEMP_SUFFIX}' -delete -o -name "
            f"'.*{SIDECAR_SUFFIX}' -delete")
