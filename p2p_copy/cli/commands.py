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
from collections.abc import Awaitable, Coroutine, Sequence
from typing import IO, Any, cast

from .._version import __version__
from ..display.progress import (
    JsonProgress,
    Progress,
    is_terminal,
    make_progress,
    offer_lines,
    with_code_on_stderr,
)
from ..errors import P2PCopyError, TransferCancelledError, UsageError, exit_codes
from ..peer.reconnect import DEFAULT_RECONNECT_TIMEOUT, IDLE_TIMEOUT
from ..protocol.codes import CODE_ENV, GENERATE, code_from_env
from ..protocol.paths import display_name
from ..protocol.policy import OfferSummary
from ..relay.logs import ADDRESS_MODES
from .tuning import tune_process

__all__ = ["main", "RELAY_TOKEN_ENV"]

#: Environment variable with a private relay's access token (keeps it out of `ps`).
RELAY_TOKEN_ENV = "P2P_COPY_RELAY_TOKEN"


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
  p2p-copy run-relay-server 127.0.0.1 8765 --no-tls
  p2p-copy send ws://127.0.0.1:8765 auto report.pdf data/      (prints a code)
  p2p-copy receive ws://127.0.0.1:8765 7-crossover-clockwork-puma --out incoming/
  {CODE_ENV}=7-crossover-clockwork-puma p2p-copy receive wss://relay.example.org -
  tar c dir | p2p-copy send ws://127.0.0.1:8765 7-crossover-clockwork-puma -
  p2p-copy receive ws://127.0.0.1:8765 7-crossover-clockwork-puma --stdout | tar x
  p2p-copy send ws://127.0.0.1:8765 auto --text "see you at 5"   (receive prints it)
  p2p-copy demo

{_exit_code_lines()}
"""


def _code_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "code",
        metavar="CODE",
        help=f"the shared code, ROOM-SECRET (e.g. 7-crossover-clockwork-puma); 'auto' (send) "
        f"generates one; '-' reads it from ${CODE_ENV} so it stays out of the process list",
    )


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server", metavar="SERVER", help="relay URL: wss://host[:port] or ws://...")
    _code_arg(parser)


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cafile", help="CA certificate (PEM) to trust for a private wss:// relay")
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
        type=float,
        metavar="SECONDS",
        help="give up if the other side has not joined within SECONDS",
    )
    parser.add_argument(
        "--no-encrypt",
        action="store_true",
        help="speak the plain protocol: the relay can read everything (both sides must agree)",
    )
    parser.add_argument(
        "--relay-token",
        metavar="TOKEN",
        help=f"access token of a private relay (default: ${RELAY_TOKEN_ENV})",
    )
    parser.add_argument(
        "--idle-timeout", type=float, metavar="SECONDS", default=IDLE_TIMEOUT,
        help="once paired, give up if the other side makes no progress for SECONDS (a "
        f"receiver that reads nothing, a sender that sends nothing; default {IDLE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--reconnect-timeout",
        type=float,
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

    send = sub.add_parser("send", help="send files and folders", epilog=EXAMPLES,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    _client_args(send)
    send.add_argument("files", nargs="*", metavar="FILE",
                      help="files and folders to send; a lone '-' sends standard input")
    send.add_argument("--text", metavar="TEXT",
                      help="send TEXT instead of files (the receiver prints it)")
    send.add_argument("--name", metavar="NAME",
                      help="with '-' or --text: the file name a receiver saving to disk uses")
    send.add_argument("--compress", choices=("auto", "always", "never"), default="auto",
                      help="zstd-compress data: 'auto' (default) while that is measured to "
                      "move it faster than sending it raw (slow links, compressible data)")
    _common_options(send)

    receive = sub.add_parser("receive", help="receive files and folders", epilog=EXAMPLES,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    _client_args(receive)
    receive.add_argument("--out", default=".", metavar="DIR",
                         help="destination folder (default: .)")
    receive.add_argument("--overwrite", action="store_true", help="replace files that exist")
    receive.add_argument("--stdout", action="store_true",
                         help="write the single file or stream to standard output (progress "
                         "goes to stderr); the exit code says whether its digest matched")
    receive.add_argument("--max-files", type=int, metavar="N",
                         help="refuse an offer of more than N files")
    receive.add_argument("--max-bytes", type=int, metavar="BYTES",
                         help="refuse an offer of more than BYTES in all")
    receive.add_argument("--max-depth", type=int, metavar="N",
                         help="refuse names nested deeper than N folders (default 64)")
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
        epilog="examples:\n  p2p-copy run-relay-server 0.0.0.0 443 --certfile cert.pem "
        "--keyfile key.pem\n  p2p-copy run-relay-server 127.0.0.1 8765 --no-tls\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    relay.add_argument("host", metavar="HOST", help="address to listen on, e.g. 0.0.0.0")
    relay.add_argument("port", metavar="PORT", type=int, help="port to listen on, e.g. 443")
    relay.add_argument("--certfile", help="TLS certificate chain (PEM)")
    relay.add_argument("--keyfile", help="TLS private key (PEM), if not in --certfile")
    relay.add_argument("--no-tls", action="store_true", help="serve plain ws:// (local use only)")
    relay.add_argument("--log-level", default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    relay.add_argument("--log-json", action="store_true",
                       help="log one JSON object per line (never codes or code hashes)")
    _relay_config_options(relay)

    demo = sub.add_parser("demo", help="start a local relay and copy a sample folder through it")
    demo.add_argument("--size", type=int, default=64, metavar="MIB",
                      help="size of the large sample file (default 64)")
    return parser


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"([0-9]+)\s*([KMGT]?)(?:I?B)?")


def _size(value: str) -> int:
    """A size in bytes from ``512M``, ``10G``, ``64KiB`` or ``1000`` (argparse type)."""
    match = _SIZE.fullmatch(value.strip().upper())
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a size: give a positive number of bytes, or one with K, M, G "
            "or T, e.g. 512M")
    return int(match[1]) * _UNITS[match[2]]


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run, with SIGTERM cancelling the work like Ctrl-C does."""

    async def main() -> Any:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        except (NotImplementedError, RuntimeError):
            pass
        return await coro

    return asyncio.run(main())


def _progress(args: argparse.Namespace) -> Any:
    return "json" if args.json else args.progress


def _command(args: argparse.Namespace) -> int:
    if args.command == "run-relay-server":
        return _run_relay(args)
    if args.command == "demo":
        from .demo import run_demo

        return int(_run(run_demo(size_mib=args.size)))

    code = code_from_env() if args.code == "-" else args.code
    if args.no_encrypt:
        print("p2p-copy: warning: --no-encrypt: the relay can read and change everything, and "
              "anyone who knows the room part of the code can take the other side's place.",
              file=sys.stderr)
    if args.command == "send":
        progress = _progress(args)
        if code == GENERATE:
            # Whatever the display, the person running this must learn the generated code.
            progress = with_code_on_stderr(make_progress(progress, "send"))
        result = _run(_send(args, code, _options(args, progress=progress,
                                                 compress=args.compress)))
    else:
        result = _receive(args, code)
    if not args.json and sys.stderr.isatty():
        verb = "Sent" if args.command == "send" else "Received"
        print(f"{verb} {len(result.files)} file(s), {result.bytes:,} bytes in "
              f"{result.duration:.1f} s.", file=sys.stderr)
    return 0


def _options(args: argparse.Namespace, **side: Any) -> Any:
    """The one Options object of a send or receive: the flags both commands share, and
    ``side``'s own. Every entry point the command may call takes all of them."""
    from ..peer.options import Options

    token = args.relay_token or os.environ.get(RELAY_TOKEN_ENV) or None
    common: dict[str, Any] = dict(cafile=args.cafile, wait_timeout=args.wait_timeout,
                                  encrypt=not args.no_encrypt, relay_token=token,
                                  idle_timeout=args.idle_timeout)
    if args.reconnect_timeout is not None:
        common["reconnect_timeout"] = args.reconnect_timeout
    return Options(**common, **side)


def _send(args: argparse.Namespace, code: str, options: Any) -> Coroutine[Any, Any, Any]:
    """The send coroutine for what the arguments name: files, standard input or a text."""
    from ..peer import api

    files: list[str] = args.files
    if args.text is not None:
        if files:
            raise UsageError("Give either FILEs or --text, not both.")
        return api.send_text(args.server, code, args.text, name=args.name or "text.txt",
                             options=options)
    if not files:
        raise UsageError("Nothing to send: give files or folders, '-' for standard input, "
                         "or --text TEXT.")
    if "-" in files:
        if len(files) > 1:
            raise UsageError("'-' (standard input) is sent on its own, without other FILEs.")
        return api.send_stream(args.server, code, sys.stdin.buffer, name=args.name or "stdin",
                               options=options)
    if args.name is not None:
        raise UsageError("--name names standard input ('-') or a --text; files keep their "
                         "own names.")
    return api.send(args.server, code, files, options=options)


def _receive(args: argparse.Namespace, code: str) -> Any:
    """Receive files into --out, a single file or stream to stdout, or a text to print."""
    from ..peer import api

    kind = _progress(args)
    out = None
    if args.stdout:
        if args.out != "." or args.overwrite:
            raise UsageError("--stdout writes nothing to disk: leave out --out and --overwrite.")
        out = sys.stdout.buffer
    # Standard output carries the data with --stdout: the events go to stderr then.
    progress = (JsonProgress(sys.stderr) if out is not None and kind == "json"
                else make_progress(kind, "receive"))
    # Someone is asked about the offer only if they can see the question and answer it.
    if not (args.yes or isinstance(progress, JsonProgress)) and is_terminal(sys.stdin) \
            and is_terminal(sys.stderr):
        progress = _AskOnTerminal(progress, args.out).display()
    side: dict[str, Any] = dict(progress=progress, overwrite=args.overwrite,
                                policy=_policy(args))
    if args.max_text is not None:
        side["max_memory"] = args.max_text
    result, text = _run(api.receive_any(args.server, code, args.out, out=out,
                                        options=_options(args, **side)))
    if text is not None:
        _print_text(text)
    return result


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
        lines.append(f"Receive into {display_name(self._dest)}? [y/N] ")
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
        sys.stdout.write(text)
        sys.stdout.flush()
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
     "on SIGTERM, how long running pairs may finish before they are closed with 4005"),
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


def _read_tokens(path: str) -> frozenset[str]:
    """The access tokens in ``path``: one per line; blank lines and # comments are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"Cannot read the access token file {path!r}: {exc}") from None
    tokens = frozenset(line.strip() for line in lines
                       if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise UsageError(
            f"The access token file {path!r} holds no token. Put one token per line in it.")
    return tokens


def _relay_limits(args: argparse.Namespace) -> dict[str, Any]:
    """RelayConfig fields from run-relay-server's options."""
    fields = {name: getattr(args, name) for name, _, _ in (*_RELAY_OPTIONS, *_RELAY_LIMITS)}
    if args.access_token_file:
        fields["access_tokens"] = _read_tokens(args.access_token_file)
    return fields


def _policy(args: argparse.Namespace) -> Any:
    from ..protocol.policy import ReceivePolicy

    limits = {"max_files": args.max_files, "max_bytes": args.max_bytes,
              "max_depth": args.max_depth}
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
        try:
            context = server_ssl_context(args.certfile, args.keyfile)
        except (OSError, ValueError) as exc:
            raise UsageError(f"Cannot load the TLS certificate or key: {exc}") from None
    if args.drain_timeout < 0:
        raise UsageError("--drain-timeout must not be negative.")
    try:
        config = RelayConfig(**_relay_limits(args))
    except ValueError as exc:
        raise UsageError(f"Invalid relay limit: {exc}.") from None
    configure_logging(args.log_level, json_lines=args.log_json)
    try:
        # Not _run: SIGTERM drains the relay (run_relay handles it) instead of cancelling.
        asyncio.run(run_relay(args.host, args.port, ssl_context=context, config=config,
                              announce=not args.log_json))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except OSError as exc:
        raise UsageError(f"Cannot listen on {args.host}:{args.port}: {exc.strerror}.") from None
    logging.getLogger("p2p_copy.relay").info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``p2p-copy`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    tune_process()
    try:
        return _command(args)
    except P2PCopyError as exc:
        print(f"p2p-copy: {display_name(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM (see _run)
        print("p2p-copy: cancelled.", file=sys.stderr)
        return TransferCancelledError.exit_code


def console_main() -> None:
    """The ``p2p-copy`` command: main()'s return value becomes the exit status."""
    sys.exit(main())
