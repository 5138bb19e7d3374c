"""Processes that bench.py runs for the Python baselines and the pairs case: the raw
TCP sender, receiver, forwarder and pairing relay (without socat), the pairs clients of
ours, 0.1.1 and raw TCP, wsmin's relay, sender and receiver, and the long link
(longlink.py, the longlink case's emulated long path). bench.py starts them as
``python bench.py _NAME ARGS`` and imports only this module for them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

CHUNK = 256 * 1024


def _connect_retry(port: int, timeout: float = 30.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port))
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def helper_tcp_send(port: int, path: str) -> int:
    sock = _connect_retry(port)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with sock, (open(path, "rb", buffering=0) if path != "-"
                else os.fdopen(0, "rb", buffering=0)) as f:
        while n := f.readinto(buf):
            sock.sendall(view[:n])
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the relay closes once the receiver has everything
    return 0


def helper_tcp_recv(port: int, path: str) -> int:
    sock = _connect_retry(port)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with sock, (open(path, "wb", buffering=0) if path != "-"
                else os.fdopen(1, "wb", buffering=0)) as f:
        while n := sock.recv_into(buf):
            f.write(view[:n])
    return 0


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def helper_forward(p1: int, p2: int) -> int:
    """A minimal relay: one connection on p1, one on p2, bytes copied both ways."""
    got: list[asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = [
        asyncio.get_running_loop().create_future() for _ in range(2)]

    def accept(i: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]:
        def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            if not got[i].done():
                got[i].set_result((r, w))
        return cb

    servers = [await asyncio.start_server(accept(i), "127.0.0.1", p)
               for i, p in enumerate((p1, p2))]
    (r1, w1), (r2, w2) = await asyncio.gather(*got)
    for s in servers:
        s.close()
    await asyncio.gather(_pump(r1, w2), _pump(r2, w1))
    for w in (w1, w2):
        w.close()
    return 0


async def helper_pairing_relay(port: int) -> int:
    """Pairs raw TCP connections by a first line "S|R CODE\\n" and copies S -> R."""
    waiting: dict[str, tuple[str, asyncio.StreamReader, asyncio.StreamWriter,
                             asyncio.Future[None]]] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            role, _, code = (await reader.readline()).decode().strip().partition(" ")
        except (ConnectionError, UnicodeDecodeError):
            writer.close()
            return
        other = waiting.pop(code, None)
        if other is None:
            done = asyncio.get_running_loop().create_future()
            waiting[code] = (role, reader, writer, done)
            await done
            return
        orole, oreader, owriter, odone = other
        (sr, _sw), (_rr, rw) = (((reader, writer), (oreader, owriter)) if role == "S"
                                else ((oreader, owriter), (reader, writer)))
        await _pump(sr, rw)
        for w in (writer, owriter):
            w.close()
        odone.set_result(None)

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    loop = asyncio.get_running_loop()
    stopping = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stopping.set_result, None)
    async with server:
        await stopping
    return 0


async def pairs_client(args: argparse.Namespace) -> int:
    """N senders or N receivers at once (``--impl``: ours, seed or tcp)."""
    src, out = Path(args.src), Path(args.out)

    if args.impl == "ours":
        import p2p_copy

        async def one(i: int) -> None:
            code = f"{i}-{args.prefix}"  # the room is the part before the first "-"
            if args.role == "send":
                await p2p_copy.send(args.target, code, [src / f"pair-{i}.bin"],
                                    progress="none", wait_timeout=args.timeout)
            else:
                await p2p_copy.receive(args.target, code, out / str(i), progress="none",
                                       wait_timeout=args.timeout)
    elif args.impl == "seed":
        import p2p_copy  # the venv's 0.1.1

        async def one(i: int) -> None:
            code = f"{args.prefix}-{i}"
            if args.role == "send":
                rc = await p2p_copy.send(args.target, code, [str(src / f"pair-{i}.bin")])
            else:
                (out / str(i)).mkdir(parents=True, exist_ok=True)
                rc = await p2p_copy.receive(  # type: ignore[call-arg]
                    args.target, code, out=str(out / str(i)))
            if rc:
                raise RuntimeError(f"exit code {rc}")
    else:
        host, _, port = args.target.rpartition(":")

        async def one(i: int) -> None:
            code = f"{args.prefix}-{i}"
            reader, writer = await asyncio.open_connection(host, int(port))
            if args.role == "send":
                writer.write(f"S {code}\n".encode() + (src / f"pair-{i}.bin").read_bytes())
                await writer.drain()
                writer.write_eof()
                await reader.read()
            else:
                writer.write(f"R {code}\n".encode())
                await writer.drain()
                data = await reader.read()
                (out / str(i)).mkdir(parents=True, exist_ok=True)
                (out / str(i) / f"pair-{i}.bin").write_bytes(data)
            writer.close()

    errors: list[str] = []

    async def guarded(i: int) -> None:
        try:
            async with asyncio.timeout(args.timeout):
                await one(i)
        except Exception as exc:
            errors.append(f"{i}: {type(exc).__name__}: {exc}")

    tasks = []
    for i in range(args.n):
        tasks.append(asyncio.ensure_future(guarded(i)))
        if args.ramp and (i + 1) % args.ramp == 0:
            await asyncio.sleep(0.01)  # --ramp connections per 10 ms: no SYN flood
    await asyncio.gather(*tasks)
    print(json.dumps({"role": args.role, "ok": args.n - len(errors), "failed": len(errors),
                      "errors": errors[:5]}), flush=True)
    return 1 if errors else 0


#: wsmin's fixed demo key (a reference pipeline, not a secure tool: no key exchange).
WSMIN_KEY = bytes(range(32))
WSMIN_MAX_SIZE = 1 << 20  # > one 256 KiB chunk + the GCM tag


def _wsmin_nonce(i: int) -> bytes:
    return i.to_bytes(12, "big")


async def helper_wsmin_relay(port: int) -> int:
    """The first connection on /send and the first on /recv are paired; every message is
    forwarded to the other side; when one side closes, the other is closed."""
    from websockets.asyncio.server import ServerConnection, serve

    loop = asyncio.get_running_loop()
    peers: dict[str, asyncio.Future[ServerConnection]] = {
        "/send": loop.create_future(), "/recv": loop.create_future()}

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else ""
        mine = peers.get(path)
        if mine is None or mine.done():
            await ws.close(1008, "only one /send and one /recv")
            return
        mine.set_result(ws)
        other = await peers["/recv" if path == "/send" else "/send"]
        try:
            async for msg in ws:
                await other.send(msg)
        finally:
            await other.close()

    stopping = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stopping.set_result, None)
    async with serve(handler, "127.0.0.1", port, compression=None,
                     max_size=WSMIN_MAX_SIZE):
        await stopping
    return 0


async def helper_wsmin_send(url: str, path: str) -> int:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from websockets.asyncio.client import connect

    aes, h = AESGCM(WSMIN_KEY), hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    async with connect(url, compression=None, max_size=WSMIN_MAX_SIZE) as ws:
        with open(path, "rb", buffering=0) as f:
            i = 0
            while n := f.readinto(buf):
                h.update(view[:n])
                await ws.send(aes.encrypt(_wsmin_nonce(i), view[:n], None))
                i += 1
        await ws.send(h.hexdigest())
    return 0


async def helper_wsmin_recv(url: str, path: str) -> int:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from websockets.asyncio.client import connect

    aes, h = AESGCM(WSMIN_KEY), hashlib.sha256()
    digest = None
    async with connect(url, compression=None, max_size=WSMIN_MAX_SIZE) as ws:
        with open(path, "wb", buffering=0) as f:
            i = 0
            async for msg in ws:
                if isinstance(msg, str):
                    digest = msg
                    break
                data = aes.decrypt(_wsmin_nonce(i), msg, None)
                h.update(data)
                f.write(data)
                i += 1
    if digest != h.hexdigest():
        print(f"SHA-256 mismatch: sender {digest}, received {h.hexdigest()}", file=sys.stderr)
        return 1
    return 0


def helper_main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "_wsmin-relay":
        return asyncio.run(helper_wsmin_relay(int(argv[1])))
    if cmd == "_wsmin-send":
        return asyncio.run(helper_wsmin_send(argv[1], argv[2]))
    if cmd == "_wsmin-recv":
        return asyncio.run(helper_wsmin_recv(argv[1], argv[2]))
    if cmd == "_tcp-send":
        return helper_tcp_send(int(argv[1]), argv[2])
    if cmd == "_tcp-recv":
        return helper_tcp_recv(int(argv[1]), argv[2])
    if cmd == "_forward":
        return asyncio.run(helper_forward(int(argv[1]), int(argv[2])))
    if cmd == "_pairing-relay":
        return asyncio.run(helper_pairing_relay(int(argv[1])))
    if cmd == "_longlink":
        from .longlink import main as longlink_main

        return longlink_main(argv[1:])
    if cmd == "_pairs-client":
        p = argparse.ArgumentParser(prog="bench.py _pairs-client")
        p.add_argument("--impl", choices=["ours", "seed", "tcp"], required=True)
        p.add_argument("--role", choices=["send", "receive"], required=True)
        for opt in ("--target", "--prefix", "--src", "--out"):
            p.add_argument(opt, required=True)
        p.add_argument("--n", type=int, required=True)
        p.add_argument("--timeout", type=float, default=300)
        p.add_argument("--ramp", type=int, default=50)
        return asyncio.run(pairs_client(p.parse_args(argv[1:])))
    raise SystemExit(f"unknown helper {cmd}")
