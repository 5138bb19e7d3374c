"""The ``p2p-copy`` command: argument parsing and exit codes, nothing else.

Expected failures print one line saying what happened and what to do, and exit with
the code of their class (errors.py); only a bug prints a traceback (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from ._version import __version__
from .codes import CODE_ENV, code_from_env
from .errors import P2PCopyError, UsageError
from .logs import ADDRESS_MODES
from .paths import display_name

__all__ = ["main"]

EXAMPLES = f"""\
examples:
  p2p-copy run-relay-server 127.0.0.1 8765 --no-tls
  p2p-copy send ws://127.0.0.1:8765 purple-sausages report.pdf data/
  p2p-copy receive ws://127.0.0.1:8765 purple-sausages --out incoming/
  {CODE_ENV}=purple-sausages p2p-copy receive wss://relay.example.org -
  p2p-copy demo

exit codes: 0 ok, 1 other error, 2 usage, 3 relay unreachable, 4 timeout, 5 code in use,
  6 peer gone, 7 connection lost, 8 protocol error, 9 integrity, 10 unsafe path,
  11 destination exists, 12 disk full, 13 incompatible peer, 14 wrong code,
  15 encryption mismatch, 16 tampering, 17 relay limit, 18 access denied,
  19 policy, 130 cancelled
"""


def _code_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "code",
        metavar="CODE",
        help=f"the shared code; '-' reads it from ${CODE_ENV} so it stays out of the process list",
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
    send.add_argument("files", nargs="+", metavar="FILE", help="files and folders to send")
    _common_options(send)

    receive = sub.add_parser("receive", help="receive files and folders", epilog=EXAMPLES,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    _client_args(receive)
    receive.add_argument("--out", default=".", metavar="DIR",
                         help="destination folder (default: .)")
    receive.add_argument("--overwrite", action="store_true", help="replace files that exist")
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
    relay.add_argument("--hello-timeout", type=float, default=10.0, metavar="SECONDS")
    relay.add_argument("--peer-timeout", type=float, default=600.0, metavar="SECONDS",
                       help="how long a peer may wait for its partner (default 600)")
    relay.add_argument("--max-message-size", type=int, default=2**21, metavar="BYTES")
    relay.add_argument("--drain-timeout", type=float, default=60.0, metavar="SECONDS",
                       help="on SIGTERM, how long running pairs may finish before they are "
                       "closed with 4005 (default 60)")
    relay.add_argument("--log-level", default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    relay.add_argument("--log-json", action="store_true",
                       help="log one JSON object per line (never codes or code hashes)")
    relay.add_argument("--log-addresses", choices=ADDRESS_MODES, default="blur",
                       help="peer addresses in logs: full, blur (/24 or /48, default) or none")

    demo = sub.add_parser("demo", help="start a local relay and copy a sample folder through it")
    demo.add_argument("--size", type=int, default=64, metavar="MIB",
                      help="size of the large sample file (default 64)")
    return parser


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

    from . import api

    code = code_from_env() if args.code == "-" else args.code
    if args.command == "send":
        result = _run(api.send(args.server, code, args.files, cafile=args.cafile,
                               progress=_progress(args), wait_timeout=args.wait_timeout))
    else:
        result = _run(api.receive(args.server, code, args.out, overwrite=args.overwrite,
                                  cafile=args.cafile, progress=_progress(args),
                                  wait_timeout=args.wait_timeout))
    if not args.json and sys.stderr.isatty():
        verb = "Sent" if args.command == "send" else "Received"
        print(f"{verb} {len(result.files)} file(s), {result.bytes:,} bytes in "
              f"{result.duration:.1f} s.", file=sys.stderr)
    return 0


def _run_relay(args: argparse.Namespace) -> int:
    import logging

    from .logs import configure_logging
    from .relay import RelayConfig, run_relay, server_ssl_context

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
    configure_logging(args.log_level, json_lines=args.log_json)
    config = RelayConfig(hello_timeout=args.hello_timeout, peer_timeout=args.peer_timeout,
                         max_message_size=args.max_message_size,
                         drain_timeout=args.drain_timeout, log_addresses=args.log_addresses)
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
    try:
        return _command(args)
    except P2PCopyError as exc:
        print(f"p2p-copy: {display_name(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM (see _run)
        print("p2p-copy: cancelled.", file=sys.stderr)
        return 130
