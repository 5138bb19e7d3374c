"""The ``p2p-copy`` command: argument parsing and exit codes, nothing else.

Expected failures print one line saying what happened and what to do, and exit with
the code of their class (errors.py); only a bug prints a traceback (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import IO, Any, cast

from .._version import __version__
from ..display.progress import (
    JsonProgress,
    Progress,
    is_terminal,
    make_progress,
    offer_lines,
)
from ..errors import P2PCopyError, TransferCancelledError, UsageError, exit_codes
from ..peer.reconnect import DEFAULT_RECONNECT_TIMEOUT, IDLE_TIMEOUT
from ..protocol.codes import (
    CODE_ENV,
    GENERATE,
    code_from_env,
    generate_code,
    looks_like_code,
    normalize_code,
    split_code,
    weak_code_warning,
)
from ..protocol.lanes import LANE_CAP
from ..protocol.paths import display_name
from ..protocol.policy import DEFAULT_MAX_DEPTH, DEFAULT_MAX_ENTRIES, OfferSummary
from ..relay.logs import ADDRESS_MODES
from ..signals import INTERRUPTS, on_signals
from . import eventloop
from .config import RELAY_ENV, Relay, choose_relay, is_relay_url, served_relay
from .report import Tally, kept_partial, receive_lines, shell_word, shown_path, summary
from .serve import DEFAULT_HOST, parse_serve
from .tuning import tune_process

__all__ = ["main", "RELAY_TOKEN_ENV"]

#: Environment variable with a private relay's access token (keeps it out of `ps`).
RELAY_TOKEN_ENV = "P2P_COPY_RELAY_TOKEN"
#: The config file as help texts show it (config.config_path() is where it really is).
_CONFIG_SHOWN = os.path.join("~", ".config", "p2p-copy", "config.toml")
#: The subcommands: a first argument that is none of them may be a code or a file (main).
COMMANDS = ("send", "receive", "run-relay-server", "demo", "completion")


def _exit_code_lines() -> str:
    """errors.py's exit codes as --help lists them: each class's name in words."""
    labels = ["0 ok", f"{P2PCopyError.exit_code} other error"]
    for code, cls in exit_codes().items():
        if cls is not P2PCopyError:
            words = re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__.removesuffix("Error"))
            labels.append(f"{code} {words.lower()}")
    # No break inside a label (textwrap does not break at U+00A0).
    text = textwrap.fill(", ".join(label.replace(" ", "\xa0") for label in labels),
                         width=88, initial_indent="exit codes: ", subsequent_indent="  ")
    return text.replace("\xa0", " ")


EXAMPLES = f"""\
examples:
  p2p-copy send report.pdf data/          (prints a code; the relay from --relay,
                                           ${RELAY_ENV} or {_CONFIG_SHOWN})
  p2p-copy receive 7-crossover-clockwork-puma --out incoming/
  p2p-copy 7-crossover-clockwork-puma     (the same: a code alone receives)
  p2p-copy receive                        (asks for the code; Tab completes its words)
  p2p-copy send --relay wss://relay.example.org --cafile ca.pem --qr report.pdf
the relay typed first, as in p2p-copy 0.1 (a ws:// or wss:// URL, then the code):
  p2p-copy run-relay-server 127.0.0.1 8765 --no-tls
  p2p-copy send ws://127.0.0.1:8765 auto report.pdf data/      (prints a code)
  p2p-copy receive ws://127.0.0.1:8765 7-crossover-clockwork-puma --out incoming/
  {CODE_ENV}=7-crossover-clockwork-puma p2p-copy receive wss://relay.example.org -
  tar c dir | p2p-copy send ws://127.0.0.1:8765 7-crossover-clockwork-puma -
  p2p-copy receive ws://127.0.0.1:8765 7-crossover-clockwork-puma --stdout | tar x
  p2p-copy send ws://127.0.0.1:8765 auto --text "see you at 5"   (receive prints it)
  p2p-copy demo
  p2p-copy completion bash > ~/.local/share/bash-completion/completions/p2p-copy

{_exit_code_lines()}
"""


_CODE_HELP = (f"the shared code, ROOM-SECRET (e.g. 7-crossover-clockwork-puma), in any case; "
              f"'-' reads it from ${CODE_ENV} so that it stays out of the process list")


def _seconds(*, zero: bool) -> Callable[[str], float]:
    """An argparse type for a number of seconds: positive (or also 0, ``zero``), not NaN, so
    that the flag's own name is in the error, not the Python option's."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not (value >= 0 if zero else value > 0):  # NaN too
            raise argparse.ArgumentTypeError(
                f"must be {'0 or more' if zero else 'more than 0'} seconds, not {text!r}")
        return value
    return parse


def _lanes(text: str) -> int:
    """An argparse type for --lanes: a whole number from 1 to LANE_CAP."""
    if not text.isdigit() or not 1 <= int(text) <= LANE_CAP:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {LANE_CAP}, "
                                         f"not {text!r}")
    return int(text)


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--relay", metavar="URL", dest="server",
        help=f"the relay, wss://HOST[:PORT][/PATH] or ws://... (default: ${RELAY_ENV}, else "
        f"relay in {_CONFIG_SHOWN}, which may also hold cafile and relay_token for it)")
    parser.add_argument(
        "--cafile", metavar="PEM",
        help="CA certificate to trust for a private wss:// relay (default: the system's "
        "certificates, or cafile in the config file when the relay is its relay)")
    parser.add_argument(
        "--fingerprint", metavar="sha256:HEX",
        help="trust the relay by its certificate's SHA-256 instead of a CA, as the line "
        "printed by a side that serves the relay (--serve) gives it; any other "
        "certificate is refused")
    parser.add_argument(
        "--serve", metavar="[HOST:]PORT", type=parse_serve,
        help="no relay? serve one here for this transfer: listen on HOST (default "
        f"{DEFAULT_HOST}, every interface, since the other machine must reach this one) "
        "at PORT, with TLS under a certificate made now. The line printed for the other "
        "side carries its fingerprint; the relay stops when the transfer ends")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON event per line instead of a bar"
    )
    parser.add_argument(
        "--progress",
        choices=["auto", "tqdm", "json", "none"],
        help="progress display (default: a bar on a terminal, nothing otherwise)",
    )
    parser.add_argument(
        "--wait-timeout",
        type=_seconds(zero=False),
        metavar="SECONDS",
        help="give up if the other side has not joined within SECONDS (default: as long "
        "as the relay keeps a waiting peer: its --peer-timeout)",
    )
    parser.add_argument(
        "--no-encrypt",
        action="store_true",
        help="speak the plain protocol: the relay can read everything (both sides must agree)",
    )
    parser.add_argument(
        "--relay-token",
        metavar="TOKEN",
        help=f"access token of a private relay (default: ${RELAY_TOKEN_ENV}, else "
        "relay_token in the config file when the relay is its relay)",
    )
    parser.add_argument(
        "--idle-timeout", type=_seconds(zero=False), metavar="SECONDS", default=IDLE_TIMEOUT,
        help="once paired, give up if the other side makes no progress for SECONDS (a "
        f"receiver that reads nothing, a sender that sends nothing; default {IDLE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--lanes", type=_lanes, metavar="N", default=LANE_CAP,
        help="use at most N connections to the relay for this transfer (1 to "
        f"{LANE_CAP}; default {LANE_CAP}): the sender adds one while that speeds up a long "
        "link, and stays at one on a LAN; 1 turns this off (both sides must allow it)",
    )
    parser.add_argument(
        "--reconnect-timeout",
        type=_seconds(zero=True),
        metavar="SECONDS",
        help="when the connection drops, keep reconnecting and resume for up to SECONDS "
        f"(default {DEFAULT_RECONNECT_TIMEOUT:g}; 0 turns it off)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2p-copy",
        description="Copy files and folders between two machines through a relay, "
        "paired by a short shared code.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"p2p-copy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    send = sub.add_parser(
        "send", help="send files and folders", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="p2p-copy send [options] FILE...\n"
              "       p2p-copy send [options] SERVER CODE|auto FILE...")
    send.add_argument(
        "files", nargs="*", metavar="FILE",
        help="files and folders to send; a lone '-' sends standard input. A first argument "
        "that is a ws:// or wss:// URL is the relay, and the code follows it ('auto': "
        "generated)")
    send.add_argument("--code", metavar="CODE",
                      help=f"{_CODE_HELP} (default: a generated code, shown once the relay "
                      "has its room)")
    send.add_argument("--qr", action="store_true",
                      help="also show the line to run on the other machine as a QR code")
    send.add_argument("--text", metavar="TEXT",
                      help="send TEXT instead of files (the receiver prints it)")
    send.add_argument("--name", metavar="NAME",
                      help="with '-' or --text: the file name a receiver saving to disk uses "
                      "(default: stdin, or text.txt)")
    send.add_argument("--compress", choices=("auto", "always", "never"), default="auto",
                      help="zstd-compress data: 'auto' (default) while that is measured to "
                      "move it faster than sending it raw (slow links, compressible data)")
    _common_options(send)

    receive = sub.add_parser(
        "receive", help="receive files and folders", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="p2p-copy receive [options] [CODE]\n"
              "       p2p-copy receive [options] SERVER CODE")
    receive.add_argument(
        "code", nargs="*", metavar="CODE",
        help=f"{_CODE_HELP}; asked for on a terminal if left out. A first argument that is "
        "a ws:// or wss:// URL is the relay")
    receive.add_argument("--out", default=".", metavar="DIR",
                         help="destination folder (default: .)")
    receive.add_argument("--overwrite", action="store_true", help="replace files that exist")
    receive.add_argument("--stdout", action="store_true",
                         help="write the single file or stream to standard output (progress "
                         "goes to stderr); the exit code says whether its digest matched")
    receive.add_argument("--max-files", type=int, metavar="N",
                         help="refuse an offer of more than N files (default: no limit)")
    receive.add_argument("--max-bytes", type=_size_or_zero, metavar="SIZE",
                         help="refuse an offer of more than SIZE in all: bytes, or with K, "
                         "M, G, T (powers of 1024), e.g. 10G (default: no limit)")
    receive.add_argument("--max-depth", type=int, metavar="N",
                         help="refuse names nested deeper than N folders (default "
                         f"{DEFAULT_MAX_DEPTH})")
    # Without it a tree of more entries than the default could not be received at all.
    receive.add_argument("--max-entries", type=int, metavar="N",
                         help="refuse an offer of more than N files and folders together "
                         f"(default {DEFAULT_MAX_ENTRIES:,})")
    receive.add_argument("--max-text", type=_size, metavar="SIZE",
                         help="refuse a text (send --text) of more than SIZE, which is held "
                         "in memory to be printed: bytes, or with K, M, G, T (powers of "
                         "1024), e.g. 512M (default 32M)")
    receive.add_argument("-y", "--yes", action="store_true",
                         help="take the offer without asking (on a terminal, receive shows "
                         "what the sender offers and asks first); hidden top-level names "
                         "still need --allow-hidden")
    receive.add_argument("--allow-hidden", action="store_true",
                         help="when nobody is asked (--yes, --json, no terminal), accept "
                         "hidden names at the top level (.ssh/, .bashrc), which are refused "
                         "otherwise")
    _common_options(receive)

    relay = sub.add_parser(
        "run-relay-server",
        help="run a relay (TLS unless --no-tls)",
        description="Run a relay: peers connect with WebSocket to / or /ROOM_HASH.\n"
        "Plain HTTP GETs: / and /static/NAME (the web page, unless --no-web),\n"
        "/healthz, /readyz, /metrics.",
        epilog="examples:\n  p2p-copy run-relay-server 0.0.0.0 443 --certfile cert.pem "
        "--keyfile key.pem\n  p2p-copy run-relay-server 127.0.0.1 8765 --no-tls\n\n"
        "stopping:\n  SIGTERM (kill, systemctl stop, docker stop) drains: running pairs may "
        "finish\n  for --drain-timeout seconds, new peers are turned away. On Windows, "
        "where no\n  other process can send SIGTERM, Ctrl-Break in the relay's console "
        "drains.\n  Ctrl-C stops at once, closing every connection.\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    relay.add_argument("host", metavar="HOST", help="address to listen on, e.g. 0.0.0.0")
    relay.add_argument("port", metavar="PORT", type=_port, help="port to listen on, e.g. 443")
    relay.add_argument("--certfile", help="TLS certificate chain (PEM)")
    relay.add_argument("--keyfile", help="TLS private key (PEM), if not in --certfile")
    relay.add_argument("--no-tls", action="store_true", help="serve plain ws:// (local use only)")
    relay.add_argument("--log-level", default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="the least important messages logged (default INFO)")
    relay.add_argument("--log-json", action="store_true",
                       help="log one JSON object per line (never codes or code hashes)")
    _relay_config_options(relay)

    demo = sub.add_parser("demo", help="start a local relay and copy a sample folder through it")
    demo.add_argument("--size", type=int, default=64, metavar="MIB",
                      help="size of the large sample file (default 64)")

    completion = sub.add_parser(
        "completion", help="print a shell completion script (needs the shtab package)",
        epilog="examples:\n"
        "  p2p-copy completion bash > ~/.local/share/bash-completion/completions/p2p-copy\n"
        "  p2p-copy completion zsh > ~/.zfunc/_p2p-copy\n"
        "  p2p-copy completion fish > ~/.config/fish/completions/p2p-copy.fish\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    completion.add_argument("shell", choices=("bash", "zsh", "fish"), metavar="SHELL",
                            help="bash, zsh or fish")
    return parser


def _port(value: str) -> int:
    """A TCP port, 0 (any free one) to 65535 (argparse type)."""
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port: give 1 to 65535")
    return port


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"([0-9]+)\s*([KMGT]?)(?:I?B)?")


def _size(value: str, minimum: int = 1) -> int:
    """A size in bytes from ``512M``, ``10G``, ``64KiB`` or ``1000`` (argparse type)."""
    match = _SIZE.fullmatch(value.strip().upper())
    if match is None or int(match[1]) < minimum:
        least = "a positive" if minimum else "a"
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a size: give {least} number of bytes, or one with K, M, G "
            "or T, e.g. 512M")
    return int(match[1]) * _UNITS[match[2]]


def _size_or_zero(value: str) -> int:
    """A size that may be 0 (argparse type): ``--max-bytes 0`` takes only empty files."""
    return _size(value, minimum=0)


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on the CLI's loop (eventloop.py), with Ctrl-C (Ctrl-Break on Windows)
    and SIGTERM cancelling the work.

    Ctrl-C says "cancelling…" at once on a terminal: closing the connection and keeping
    what arrived for a later run may take a moment, which must not look like a hang.
    """

    async def main() -> Any:
        task = asyncio.current_task()
        assert task is not None

        def interrupted() -> None:
            if is_terminal(sys.stderr):
                print("\np2p-copy: cancelling…", file=sys.stderr, flush=True)
            task.cancel()

        handlers: dict[int, Callable[[], object]] = {signal.SIGTERM: task.cancel}
        handlers.update(dict.fromkeys(INTERRUPTS, interrupted))
        with on_signals(handlers):
            return await coro

    return eventloop.run(main())


def _progress(args: argparse.Namespace) -> Any:
    return "json" if args.json else args.progress


def _command(args: argparse.Namespace) -> int:
    if args.command == "run-relay-server":
        return _run_relay(args)
    if args.command == "demo":
        from .demo import run_demo

        return int(_run(run_demo(size_mib=args.size)))
    if args.command == "completion":
        return _completion(args.shell)

    if args.command == "send":
        relay, code, files = _send_arguments(args)
    else:
        relay, code = _receive_arguments(args)
    if args.no_encrypt:
        print("p2p-copy: warning: --no-encrypt: the relay can read and change everything, and "
              "anyone who knows the room part of the code can take the other side's place.",
              file=sys.stderr)
    if code != GENERATE and code != normalize_code(code) and is_terminal(sys.stderr):
        # Peers before 0.6 use the code as typed: with them, only the lower-case form pairs.
        print(f"p2p-copy: note: the code is used as {normalize_code(code)!r} (lower case, no "
              "surrounding spaces); a peer older than p2p-copy 0.6 must type it that way.",
              file=sys.stderr)
    if args.command == "send":
        # Said to a person at a terminal, who chose the code and can choose another; a
        # script's stderr stays one line per failure (and its code was chosen on purpose).
        if code != GENERATE and is_terminal(sys.stderr):
            weak = weak_code_warning(code)
            if weak is not None and not args.no_encrypt:
                print(f"p2p-copy: warning: {weak}", file=sys.stderr)
        display = make_progress(_progress(args), "send")
        if args.text is not None and not isinstance(display, JsonProgress):
            display = _NoBar(display).display()  # a text is one message: no file bar
        # Whatever the display, the person running this must learn a generated code, and
        # the other side needs a served relay's address and fingerprint.
        shown = relay if code == GENERATE or args.qr or relay.served else None
        tally = Tally(display, shown, qr=args.qr)
        result = _run(_hosted(relay, _send(args, relay, code, files,
                                           _options(relay, args, progress=tally.display(),
                                                    compress=args.compress))))
        where = None
    else:
        result, tally, where = _receive(args, relay, code)
    if not args.json and sys.stderr.isatty():
        print(summary(result, tally, where), file=sys.stderr)
    return 0


def _send_arguments(args: argparse.Namespace) -> tuple[Relay, str, list[str]]:
    """The relay, the code (GENERATE for a generated one) and the files of a send.

    ``send FILE...`` takes the relay from the defaults; the seed's ``send SERVER CODE
    FILE...`` (a first argument that is a URL) keeps working, except where a slip would
    pass silently: a lone file after SERVER is a file (its code generated), and a code
    that names a file or folder here is refused rather than guessed.
    """
    items: list[str] = list(args.files)
    typed = args.server
    code: str | None = args.code
    if items and is_relay_url(items[0]):
        if args.server:
            raise UsageError("Give the relay once: as the first argument or with --relay.")
        typed = items.pop(0)
        if code is None and items:
            code = _positional_code(items)
    _check_sources(items)
    return _relay(args, typed), _typed_code(code or GENERATE), items


def _positional_code(items: list[str]) -> str:
    """Take the seed form's CODE off ``items`` (FILEs follow it), or GENERATE if it is a file."""
    first = items[0]
    if first in (GENERATE, "-"):
        return items.pop(0)
    exists = os.path.lexists(first)
    if looks_like_code(first):
        if exists:
            raise UsageError(
                f"{shown_path(first, quoted=True)} stands where the code goes, but names a file or "
                "folder here. To send it, put 'auto' before it (a generated code) or leave "
                "the relay to --relay; to choose the code, use --code CODE.")
        return items.pop(0)
    if exists or len(items) == 1:
        return GENERATE  # `send SERVER report.txt`: a file, not a code
    return items.pop(0)  # a code that is malformed: _typed_code says how


def _typed_code(code: str) -> str:
    """The code as given ('-': from the environment), checked; GENERATE passes as it is."""
    if code == GENERATE:
        return code
    if code == "-":
        code = code_from_env()
    split_code(code)
    return code


def _check_sources(files: list[str]) -> None:
    """Refuse, before the code is shown, two sources that would arrive under one name."""
    from ..protocol.messages import DirEntry
    from ..protocol.paths import check_entries

    names = [os.path.basename(os.path.abspath(f)) for f in files if f != "-"]
    try:
        check_entries(DirEntry(name) for name in names if name)
    except P2PCopyError as exc:
        # The receiver's rule (paths.check_entries), checked here on the top-level names
        # only: the walk and the full check come after the code was shown.
        raise UsageError(f"Cannot send these names, the receiver would refuse them ({exc}). "
                         "Rename one, or send their parent folder.") from None


def _receive_arguments(args: argparse.Namespace) -> tuple[Relay, str]:
    """The relay and the code of a receive: typed, from the defaults, or asked for."""
    items: list[str] = list(args.code)
    typed = args.server
    if items and is_relay_url(items[0]):
        if args.server:
            raise UsageError("Give the relay once: as the first argument or with --relay.")
        typed = items.pop(0)
    code = items.pop(0) if items else None
    if items:
        extra = items[0]
        if is_relay_url(extra):
            raise UsageError(f"The relay goes before the code: p2p-copy receive {extra} "
                             f"{code}, or p2p-copy receive --relay {extra} {code}.")
        raise UsageError(f"receive takes one CODE, and {display_name(extra)!r} is one more: "
                         "to choose where files go, use --out DIR.")
    _check_output(args)
    relay = _relay(args, typed)
    if relay.served is not None and code in (None, GENERATE):
        # This side tells the sender where to connect, so it chooses the code too.
        code = generate_code()
    if code is None:
        if not (is_terminal(sys.stdin) and is_terminal(sys.stderr)):
            raise UsageError("Give the code the sender shows: p2p-copy receive CODE (or '-' "
                             f"to read it from ${CODE_ENV}).")
        from .prompt import ask_code

        code = ask_code()
    if code == GENERATE:
        raise UsageError(f"'{GENERATE}' asks the sending side to generate a code; receive "
                         "needs the code the sender shows.")
    return relay, _typed_code(code)


def _relay(args: argparse.Namespace, typed: str | None) -> Relay:
    """The relay of a send or receive: the one named or the default, or one served here."""
    if args.serve is None:
        return choose_relay(typed, cafile=args.cafile, token=args.relay_token,
                            token_env=RELAY_TOKEN_ENV, fingerprint=args.fingerprint)
    given = [what for what, value in (("the relay address", typed), ("--cafile", args.cafile),
                                      ("--fingerprint", args.fingerprint),
                                      ("--relay-token", args.relay_token)) if value]
    if given:
        raise UsageError(f"--serve runs the relay here, with its own certificate: leave out "
                         f"{' and '.join(given)}.")
    from .serve import serve

    return served_relay(serve(*args.serve))


def _hosted(relay: Relay, work: Coroutine[Any, Any, Any],
            listening: Callable[[], None] | None = None) -> Coroutine[Any, Any, Any]:
    """``work``, with the relay served here (--serve) running around it."""
    if relay.served is None:
        return work
    from .serve import hosting

    return hosting(relay.served, work, listening)


def _check_output(args: argparse.Namespace) -> None:
    """Refuse before connecting what would fail only after pairing."""
    if args.stdout:
        if args.out != "." or args.overwrite:
            raise UsageError("--stdout writes nothing to disk: leave out --out and --overwrite.")
        if is_terminal(sys.stdout):
            raise UsageError("--stdout would print the received bytes onto this terminal: "
                             "pipe it (… --stdout | tar x) or save to disk with --out DIR.")
    elif os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {shown_path(args.out, quoted=True)} is a file: give a folder "
                         "(made if it does not exist).")


def _options(relay: Relay, args: argparse.Namespace, **side: Any) -> Any:
    """The one Options object of a send or receive: the flags both commands share, and
    ``side``'s own. Every entry point the command may call takes all of them."""
    from ..peer.options import Options

    common: dict[str, Any] = dict(cafile=relay.cafile, fingerprint=relay.fingerprint,
                                  wait_timeout=args.wait_timeout,
                                  encrypt=not args.no_encrypt, relay_token=relay.token,
                                  idle_timeout=args.idle_timeout, lanes=args.lanes)
    if args.reconnect_timeout is not None:
        common["reconnect_timeout"] = args.reconnect_timeout
    return Options(**common, **side)


def _send(args: argparse.Namespace, relay: Relay, code: str, files: list[str],
          options: Any) -> Coroutine[Any, Any, Any]:
    """The send coroutine for what the arguments name: files, standard input or a text."""
    from ..peer import api

    server = relay.url
    if args.text is not None:
        if files:
            raise UsageError("Give either FILEs or --text, not both.")
        return api.send_text(server, code, args.text, name=args.name or "text.txt",
                             options=options)
    if not files:
        raise UsageError("Nothing to send: give files or folders, '-' for standard input, "
                         "or --text TEXT.")
    if "-" in files:
        if len(files) > 1:
            raise UsageError("'-' (standard input) is sent on its own, without other FILEs.")
        return api.send_stream(server, code, sys.stdin.buffer, name=args.name or "stdin",
                               options=options)
    if args.name is not None:
        raise UsageError("--name names standard input ('-') or a --text; files keep their "
                         "own names.")
    return api.send(server, code, files, options=options)


def _receive(args: argparse.Namespace, relay: Relay, code: str) -> tuple[Any, Tally, str]:
    """Receive files into --out, a single file or stream to stdout, or a text to print."""
    from ..peer import api

    kind = _progress(args)
    out = None
    if args.stdout:
        out = sys.stdout.buffer
    # Standard output carries the data with --stdout: the events go to stderr then.
    progress = (JsonProgress(sys.stderr) if out is not None and kind == "json"
                else make_progress(kind, "receive"))
    # Someone is asked about the offer only if they can see the question and answer it.
    if not (args.yes or isinstance(progress, JsonProgress)) and is_terminal(sys.stdin) \
            and is_terminal(sys.stderr):
        progress = _AskOnTerminal(progress, args.out).display()
    tally = Tally(progress)
    side: dict[str, Any] = dict(progress=tally.display(), overwrite=args.overwrite,
                                policy=_policy(args))
    if args.max_text is not None:
        side["max_memory"] = args.max_text

    def listening() -> None:
        # The sender needs this relay's address and fingerprint, and the code chosen here.
        print("\n".join(receive_lines(relay, display_name(code), "send")[0]),
              file=sys.stderr, flush=True)

    result, text = _run(_hosted(relay, api.receive_any(relay.url, code, args.out, out=out,
                                                       options=_options(relay, args, **side)),
                                listening))
    if text is not None:
        _print_text(text)
    where = "standard output" if out is not None or text is not None \
        else str(Path(args.out).resolve())
    return result, tally, where


class _NoBar:
    """Forwards everything but the bar: for a text, which is one message."""

    def __init__(self, display: Progress) -> None:
        self._display = display

    def display(self) -> Progress:
        return cast(Progress, self)

    def started(self, total_bytes: int, total_files: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...

    def __getattr__(self, name: str) -> Any:
        return getattr(self._display, name)


def _completion(shell: str) -> int:
    """Print the completion script for ``shell``, made from the parser by shtab."""
    try:
        import shtab
    except ImportError:
        raise UsageError("Shell completion needs the shtab package: install p2p-copy with "
                         "its completion extra (pip install -e '.[completion]' in the "
                         "checkout) or run pip install shtab.") from None
    print(shtab.complete(build_parser(), shell=shell))
    return 0


class _AskOnTerminal:
    """Shows the offer on stderr and asks whether to take it; forwards the rest.

    The answer is read in a thread (the loop goes on serving the connection), by one
    thread at a time: a question asked again after a reconnect waits for the same line.
    Ctrl-C cancels the transfer, end of input declines.
    """

    def __init__(self, display: Progress, dest: str, stream: IO[str] | None = None) -> None:
        self._display = display
        self._dest = os.path.abspath(dest)
        self._stream = stream or sys.stderr
        self._line: asyncio.Future[bytes] | None = None

    def display(self) -> Progress:
        return cast(Progress, self)

    def offer(self, summary: OfferSummary) -> Awaitable[bool]:
        lines = offer_lines(summary)
        lines.append(f"Receive into {shown_path(self._dest)}? [y/N] ")
        self._stream.write("\n".join(lines))
        self._stream.flush()
        return self._answer()

    async def _answer(self) -> bool:
        if self._line is None or self._line.done():
            self._line = self._read_line()
        # Shielded: if the sender gives up meanwhile, the thread's line is not lost.
        line = await asyncio.shield(self._line)
        self._line = None
        if not line:
            print(file=self._stream)  # end of input (Ctrl-D) left the cursor after the question
        return line.strip().lower() in (b"y", b"yes")

    @staticmethod
    def _read_line() -> asyncio.Future[bytes]:
        loop = asyncio.get_running_loop()
        line: asyncio.Future[bytes] = loop.create_future()

        def answered(data: bytes) -> None:
            if not line.done():
                line.set_result(data)

        def read() -> None:
            # os.read, not sys.stdin: a daemon thread left blocked in a buffered reader
            # would hold its lock when the interpreter shuts down.
            try:
                data = os.read(sys.stdin.fileno(), 1024)
            except OSError:
                data = b""  # no answer: declined
            try:
                loop.call_soon_threadsafe(answered, data)
            except RuntimeError:  # the transfer ended meanwhile
                pass

        threading.Thread(target=read, name="p2p-copy-answer", daemon=True).start()
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._display, name)


def _print_text(text: str) -> None:
    """A received text to stdout: as it is into a pipe, made safe on a terminal."""
    if not sys.stdout.isatty():
        from ..storage.streams import write_all

        sys.stdout.flush()
        write_all(sys.stdout.buffer,
                  text.encode(sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict"))
        sys.stdout.buffer.flush()
        return
    # The peer chose the text: control characters must not reach the terminal as such.
    print("\n".join(display_name(line) for line in text.split("\n")))


#: run-relay-server's options that set a RelayConfig field: the field, its metavar and its
#: help (server/README.md explains each limit). Each option's default is the field's
#: default and the help shows it, at the end or where "{default}" stands: nothing here
#: restates a value.
_RELAY_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("hello_timeout", "SECONDS", "how long a new connection has to send its hello"),
    ("peer_timeout", "SECONDS", "how long a peer may wait for its partner"),
    ("max_message_size", "BYTES", "the largest message a peer may send"),
    ("drain_timeout", "SECONDS",
     "on SIGTERM (Ctrl-Break on Windows), how long running pairs may finish before "
     "they are closed with 4005"),
    ("log_addresses", "MODE",
     "peer addresses in logs: full, blur (their /24 or /48) or none"),
)
_RELAY_LIMITS: tuple[tuple[str, str, str], ...] = (
    ("max_connections", "N",
     "open connections in all; over it, handshakes get HTTP 503 (default: the open-file "
     "limit minus 100, here {default})"),
    ("max_connections_per_address", "N",
     "open connections from one address or IPv6 /64, hello or not; over it, HTTP 429"),
    ("max_waiting", "N", "peers waiting for a partner, in all; over it, close 4007"),
    ("max_waiting_per_address", "N", "peers waiting from one address; over it, close 4007"),
    ("max_connections_per_network", "N",
     "open connections from one IPv6 /48 or IPv4 /24; over it, HTTP 429"),
    ("max_waiting_per_network", "N",
     "peers waiting from one IPv6 /48 or IPv4 /24; over it, close 4007"),
    ("max_queued_bytes", "BYTES",
     "bytes held for peers in all connections; over it, close 4009 (default: a quarter "
     "of the memory, 64 MiB to 1 GiB, here {default})"),
    ("max_pairs", "N", "pairs relaying at once; over it, close 4007"),
    ("join_rate", "N",
     "connections one address may open per --join-window; over it, close 4006"),
    ("join_window", "SECONDS", "the window of --join-rate"),
    ("max_pair_bytes", "BYTES",
     "bytes a pair may forward, both directions (0: no limit); over it, close 4008 to both"),
    ("max_pair_seconds", "SECONDS",
     "how long a pair may relay (0: no limit); then close 4008 to both"),
    ("trusted_proxies", "LIST",
     "comma-separated addresses or networks whose X-Forwarded-For names the client "
     "('' for none)"),
    ("exempt_addresses", "LIST",
     "comma-separated addresses or networks with no per-address limits ('' for none)"),
)


def _networks(value: str) -> tuple[str, ...]:
    """A comma-separated list of addresses or networks (argparse type)."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _add_config_options(group: Any, table: tuple[tuple[str, str, str], ...],
                        defaults: Any) -> None:
    """An option per RelayConfig field in ``table``, with the field's default in its help."""
    for name, metavar, text in table:
        default = getattr(defaults, name)
        kind: Any = type(default)
        extra: dict[str, Any] = {}
        if isinstance(default, tuple):
            kind, default = _networks, ",".join(default)
        elif name == "log_addresses":
            extra["choices"] = ADDRESS_MODES
        shown = f"{default:g}" if isinstance(default, float) else str(default) or "''"
        # Computed defaults (from the machine) say how, in the text; the others at the end.
        text = text.format(default=shown) if "{default}" in text else f"{text} (default {shown})"
        group.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default,
                           metavar=metavar, help=text.replace("%", "%%"), **extra)


def _relay_config_options(relay: argparse.ArgumentParser) -> None:
    """The options that make the relay's RelayConfig; 0 turns a cap off."""
    from ..relay.server import RelayConfig  # its defaults, not restated here

    defaults = RelayConfig()
    _add_config_options(relay, _RELAY_OPTIONS, defaults)
    limits = relay.add_argument_group("limits (0 turns a cap off)")
    _add_config_options(limits, _RELAY_LIMITS, defaults)
    limits.add_argument(
        "--access-token-file", metavar="FILE",
        help="make the relay private: clients must send one of the tokens in FILE (one per "
        "line) as 'Authorization: Bearer TOKEN'; others get HTTP 401")
    web = relay.add_argument_group("web page (send and receive in a browser, at https://HOST/)")
    web.add_argument("--no-web", dest="web", action="store_false",
                     help="serve no web page: GET / and /static/ are answered as other paths")
    web.add_argument("--web-connect", metavar="URL", action="append", default=[],
                     type=_web_url,
                     help="another relay (wss://...) the page may connect to besides this "
                     "one; repeatable")


def _web_url(value: str) -> str:
    from ..relay.web import connect_source

    try:
        connect_source(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _reason(exc: BaseException) -> str:
    """What went wrong, without the path (an OSError's str() repeats it as repr(), which
    doubles a Windows path's backslashes)."""
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)).rstrip(".")


def _read_tokens(path: str) -> frozenset[str]:
    """The access tokens in ``path``: one per line; blank lines and # comments are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"Cannot read the access token file {shown_path(path, quoted=True)}: "
                         f"{_reason(exc)}.") from None
    tokens = frozenset(line.strip() for line in lines
                       if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise UsageError(
            f"The access token file {shown_path(path, quoted=True)} holds no token. Put one "
            "token per line in it.")
    return tokens


def _relay_limits(args: argparse.Namespace) -> dict[str, Any]:
    """RelayConfig fields from run-relay-server's options."""
    fields = {name: getattr(args, name) for name, _, _ in (*_RELAY_OPTIONS, *_RELAY_LIMITS)}
    if args.access_token_file:
        fields["access_tokens"] = _read_tokens(args.access_token_file)
    fields["web"], fields["web_connect"] = args.web, tuple(args.web_connect)
    return fields


def _policy(args: argparse.Namespace) -> Any:
    from ..protocol.policy import ReceivePolicy

    limits = {"max_files": args.max_files, "max_bytes": args.max_bytes,
              "max_depth": args.max_depth, "max_entries": args.max_entries}
    for name, value in limits.items():
        if value is not None and value < (1 if name == "max_depth" else 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number.")
    return ReceivePolicy(allow_hidden=args.allow_hidden,
                         **{k: v for k, v in limits.items() if v is not None})


def _run_relay(args: argparse.Namespace) -> int:
    import logging

    from ..relay.logs import configure_logging
    from ..relay.server import RelayConfig, run_relay, server_ssl_context

    if args.no_tls and (args.certfile or args.keyfile):
        raise UsageError("--no-tls and --certfile/--keyfile exclude each other.")
    if not args.no_tls and not args.certfile:
        raise UsageError(
            "The relay serves TLS by default: pass --certfile CERT.pem --keyfile KEY.pem, "
            "or --no-tls to serve plain ws:// for local use."
        )
    context = None
    if not args.no_tls:
        for flag, path in (("--certfile", args.certfile), ("--keyfile", args.keyfile)):
            if path is None:
                continue
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise UsageError(f"Cannot read {flag} {shown_path(path, quoted=True)}: "
                                 f"{exc.strerror}.") from None
        try:
            context = server_ssl_context(args.certfile, args.keyfile)
        except (OSError, ValueError) as exc:
            key = f" with the key {shown_path(args.keyfile, quoted=True)}" if args.keyfile else ""
            raise UsageError("Cannot load the TLS certificate "
                             f"{shown_path(args.certfile, quoted=True)}{key}: {exc}. "
                             "Check that they are PEM files and belong together.") from None
    if args.drain_timeout < 0:
        raise UsageError("--drain-timeout must not be negative.")
    try:
        config = RelayConfig(**_relay_limits(args))
    except ValueError as exc:
        raise UsageError(f"Invalid relay limit: {exc}.") from None
    configure_logging(args.log_level, json_lines=args.log_json)
    try:
        # Not _run: SIGTERM (Ctrl-Break on Windows) drains the relay (run_relay handles
        # it) instead of cancelling.
        eventloop.run(run_relay(args.host, args.port, ssl_context=context, config=config,
                                announce=not args.log_json))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except OSError as exc:
        raise UsageError(f"Cannot listen on {args.host}:{args.port}: {exc.strerror}.") from None
    logging.getLogger("p2p_copy.relay").info("stopped")
    return 0


def _habits(argv: list[str]) -> list[str]:
    """croc's habit: ``p2p-copy CODE`` receives. ``p2p-copy FILE`` is a UsageError that
    gives the send command (sending needs no more than the word, but should be meant)."""
    if not argv or argv[0].startswith("-") or argv[0] in COMMANDS:
        return argv
    first = argv[0]
    exists = os.path.lexists(first)
    if looks_like_code(first) and not exists:
        return ["receive", *argv]
    if exists:
        raise UsageError(f"Did you mean to send {shown_path(first, quoted=True)}? Run: "
                         f"p2p-copy send {display_name(' '.join(map(shell_word, argv)))}")
    return argv


def _kept_note(args: argparse.Namespace | None) -> str | None:
    """After a receive into a folder stopped: what it kept there and how to go on."""
    if args is None or getattr(args, "command", None) != "receive" or args.stdout:
        return None
    return kept_partial(args.out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``p2p-copy`` command; returns the exit code."""
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(_habits(list(sys.argv[1:] if argv is None
                                                      else argv)))
        tune_process()
        return _command(args)
    except P2PCopyError as exc:
        # Options in the command line's spelling (--overwrite), not Python's (errors.Hint).
        print(f"p2p-copy: {display_name(exc.render('cli'))}", file=sys.stderr)
        note = _kept_note(args) if is_terminal(sys.stderr) else None
        if note is not None:
            print(f"p2p-copy: {note}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM (see _run)
        note = _kept_note(args)
        print("p2p-copy: cancelled." + (f" {note}" if note else ""), file=sys.stderr)
        return TransferCancelledError.exit_code


def console_main() -> None:
    """The ``p2p-copy`` command: main()'s return value becomes the exit status."""
    sys.exit(main())
