"""A long, window-limited link in user space, for benchmarks on a kernel without netem.

It sits between peers and the relay as a TCP proxy on loopback. Every connection through
it gets two directions, and each direction models a TCP path with round-trip time RTT
whose sender may have at most WINDOW bytes unacknowledged:

- bytes read from one side are delivered to the other RTT/2 later (the way there);
- they count as in flight until RTT after they were read (their acknowledgement comes
  back), or RTT/2 after they were delivered if the far side was slow to take them;
- nothing more is read from a side while WINDOW bytes of it are in flight, and the link's
  own receive buffer is small (256 KiB per socket), so what waits to enter the path waits
  in its sender's buffers, as on a real host.

So one connection carries at most WINDOW / RTT bytes per second, as a real path with
that window does (Linux caps a socket's send buffer at 4 MiB by default: ~40 MB/s at
100 ms), and a second connection gets a window of its own. Loss, jitter and bandwidth
caps are not modelled: the question is what a window-limited path costs one connection.

    python benchmarks/harness/longlink.py --upstream 127.0.0.1:PORT --rtt 100ms

prints ``listening 127.0.0.1:LPORT`` and forwards every connection to ``PORT`` until
stopped (on SIGTERM it prints ``carried N bytes``, both ways of every connection;
``bench.py _longlink ARGS`` runs the same, with a line per ``--upstream``).
Only loopback addresses are accepted, both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import socket
import sys
from collections import deque

#: Bytes per read: smaller than any window we model, so a window fills in several reads.
READ_BYTES = 64 * 1024
DEFAULT_WINDOW = 4 * 2**20
#: The link's own receive buffer per socket: a few reads (see _connection).
RECV_BUFFER = 256 * 1024


class Direction:
    """One way of one connection: delay by RTT/2, at most ``window`` bytes in flight."""

    def __init__(self, rtt: float, window: int) -> None:
        self.rtt = rtt
        self.window = window
        self.in_flight = 0
        self.max_in_flight = 0
        self.carried = 0
        self._room = asyncio.Event()
        self._room.set()

    def _acknowledge(self, size: int) -> None:
        self.in_flight -= size
        self._room.set()

    async def run(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: deque[tuple[float, bytes]] = deque()
        arrived = asyncio.Event()
        ended = False

        async def deliver() -> None:
            while queue or not ended:
                if not queue:
                    arrived.clear()
                    await arrived.wait()
                    continue
                due, data = queue.popleft()
                await asyncio.sleep(max(0.0, due - loop.time()))
                dst.write(data)
                await dst.drain()
                read_at = due - self.rtt / 2
                acked = max(read_at + self.rtt, loop.time() + self.rtt / 2)
                loop.call_at(acked, self._acknowledge, len(data))
            with contextlib.suppress(OSError):
                dst.write_eof()

        delivering = asyncio.create_task(deliver())
        try:
            while True:
                while self.in_flight >= self.window:
                    self._room.clear()
                    await self._room.wait()
                data = await src.read(min(READ_BYTES, self.window - self.in_flight))
                if not data:
                    break
                self.in_flight += len(data)
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                self.carried += len(data)
                queue.append((loop.time() + self.rtt / 2, data))
                arrived.set()
        except OSError:
            pass
        finally:
            ended = True
            arrived.set()
            with contextlib.suppress(OSError):
                await delivering


class LongLink:
    """The proxy: ``await start()``, then connect to ``port`` instead of the upstream."""

    def __init__(self, upstream: tuple[str, int], rtt: float,
                 window: int = DEFAULT_WINDOW, retry_refused: float = 0.0) -> None:
        for host in (upstream[0],):
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError(f"{host} is not a loopback address")
        self.upstream = upstream
        self.rtt = rtt
        self.window = window
        self.retry_refused = retry_refused
        self.directions: list[Direction] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"{host} is not a loopback address")
        self._server = await asyncio.start_server(self._connection, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _connection(self, down_r: asyncio.StreamReader,
                          down_w: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_refused
        while True:
            try:
                up_r, up_w = await asyncio.open_connection(*self.upstream)
                break
            except ConnectionRefusedError:
                # A peer may connect before its relay listens (socat opens its second port
                # only after the first accepted); without a link it would retry the refused
                # connect, which the link's accepted one hides: retry for it.
                if loop.time() >= deadline:
                    down_w.close()
                    return
                await asyncio.sleep(0.005)
            except OSError:
                down_w.close()
                return
        for writer in (down_w, up_w):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # What waits to enter the path waits in its sender's own buffers, as on a
                # real host (where the send buffer holds the in-flight bytes too); a large
                # receive buffer here would queue megabytes more per connection in front
                # of the window, a delay no real path adds.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        there, back = Direction(self.rtt, self.window), Direction(self.rtt, self.window)
        self.directions += [there, back]
        try:
            await asyncio.gather(there.run(down_r, up_w), back.run(up_r, down_w))
        finally:
            for writer in (up_w, down_w):
                writer.close()


def _seconds(text: str) -> float:
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    return float(text.rstrip("s"))


def _bytes(text: str) -> int:
    units = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


async def _serve(args: argparse.Namespace) -> None:
    lhost, _, lport = args.listen.rpartition(":")
    links = []
    for upstream in args.upstream:
        host, _, port = upstream.rpartition(":")
        link = LongLink((host, int(port)), _seconds(args.rtt), _bytes(args.window),
                        args.retry_refused)
        bound = await link.start(lhost, int(lport) if len(args.upstream) == 1 else 0)
        links.append(link)
        print(f"listening {lhost}:{bound}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    # What went through, so that a benchmark can tell its peers really took the link.
    carried = sum(d.carried for link in links for d in link.directions)
    print(f"carried {carried} bytes", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, action="append",
                        help="HOST:PORT on loopback; repeated: one link (and one 'listening' "
                        "line, in order) each")
    parser.add_argument("--listen", default="127.0.0.1:0",
                        help="HOST:PORT (default: a free port; always free ones for several "
                        "upstreams)")
    parser.add_argument("--rtt", default="100ms", help="round-trip time, e.g. 100ms (default)")
    parser.add_argument("--window", default="4MiB",
                        help="bytes in flight per direction and connection (default 4MiB)")
    parser.add_argument("--retry-refused", type=float, default=0.0, metavar="SECONDS",
                        help="retry a refused upstream this long before closing the peer's "
                        "connection (default 0)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
