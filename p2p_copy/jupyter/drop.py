"""drop() and offer(): the browser that shows the notebook is the other peer.

``drop(dest)`` receives into the kernel's ``dest`` what the person drops on the panel (the
browser sends it with the JavaScript peer); ``offer(paths)`` sends ``paths`` to the
browser, which saves them where the person chooses. The kernel's side is the ordinary
receive() or send(), with its progress panel, verification and resume.

Which relay: the user's own (``$P2P_COPY_RELAY`` or the config file, as for the command
line, with its access token if it is private), else one started in this kernel on
127.0.0.1, which the browser reaches through the Jupyter server that serves the page
(jupyter-server-proxy, ``<base_url>proxy/<port>/``, authenticated by the Jupyter session).

The kernel's side needs nothing from the panel to start: it joins the relay with the
panel's code at once and waits there, so the browser's connection pairs with it whatever
the kernel is doing then; a cell that awaits the handle included (Run All, or
``await p2p_copy.drop(...)`` in the panel's own cell), while which the kernel may hear the
panel's messages late or never (panel.py). The browser's connection is the one that can
drop (a reload, a closed laptop): the kernel then waits again, and the person drops the
same files again (or clicks Save again) to continue from what arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Unpack

from ..cli.config import RELAY_ENV, choose_relay, load_defaults
from ..display.progress import NoProgress, Progress, human_size, in_jupyter_kernel, make_progress
from ..errors import (
    CancelledError,
    ConnectionLostError,
    P2PCopyError,
    PeerGoneError,
    TransferCancelledError,
    TransferTimeoutError,
    UsageError,
)
from ..peer.api import receive, send
from ..peer.background import Transfer, _current_cell, _replace_earlier, _Tracker
from ..peer.options import OptionFields, Options, resolve
from ..peer.session import optional
from ..protocol.codes import generate_code
from ..relay.server import Relay, RelayConfig
from ..results import TransferResult
from .panel import NO_WIDGETS, panel_class

__all__ = ["drop", "offer", "VIEW_TIMEOUT", "kernel_relay"]

#: Seconds for a browser to show the panel before drop()/offer() say that none will.
VIEW_TIMEOUT = 30.0
#: Seconds before the kernel joins the relay again when a wait there ended with nobody
#: come (the relay's peer timeout, or the relay went away): it never hammers the relay.
REJOIN_DELAY = 2.0
#: Seconds between the kernel's messages of the code and token to the panel's views.
SECRETS_EVERY = 1.0
#: The token variable of the command line (a private relay; the browser gets the token
#: from the kernel in a message, never in the panel's saved state: panel.py).
_TOKEN_ENV = "P2P_COPY_RELAY_TOKEN"
#: The browser's connection dropped, or it stopped: the person can start it again.
_AGAIN = (ConnectionLostError, PeerGoneError, TransferTimeoutError, TransferCancelledError)
#: The in-kernel relay: it serves the notebook's own peers only, so no web page. A peer
#: waits ten minutes for the other; the kernel, which waits from the start, joins again.
_KERNEL_RELAY_CONFIG = RelayConfig(peer_timeout=600.0, web=False)

_kernel_relay: tuple[asyncio.AbstractEventLoop, Relay] | None = None


async def kernel_relay() -> Relay:
    """The relay this kernel runs for its panels: started on first use, then reused (in
    the same event loop: a kernel has one; tests have one each)."""
    global _kernel_relay
    loop = asyncio.get_running_loop()
    if _kernel_relay is None or _kernel_relay[0] is not loop or _kernel_relay[0].is_closed():
        relay = Relay("127.0.0.1", 0, config=_KERNEL_RELAY_CONFIG)
        await relay.start()
        _kernel_relay = (loop, relay)
    return _kernel_relay[1]


@dataclass(frozen=True)
class _Route:
    """How each side reaches the relay."""

    #: The kernel's URL, CA and token.
    url: str
    cafile: str | None
    token: str | None
    #: The browser's: the same URL, or "" for the kernel's relay behind the proxy.
    browser_url: str
    proxy_port: int


async def _route() -> _Route:
    if os.environ.get(RELAY_ENV) or load_defaults().relay:
        chosen = choose_relay(None, cafile=None, token=None, token_env=_TOKEN_ENV)
        return _Route(chosen.url, chosen.cafile, chosen.token, chosen.url, 0)
    relay = await kernel_relay()
    return _Route(relay.url, None, None, "", relay.port)


def drop(dest: str | os.PathLike[str] = ".", *, options: Options | None = None,
         **keywords: Unpack[OptionFields]) -> Transfer[TransferResult]:
    """Show a panel to drop files and folders on; receive them into the kernel's ``dest``.

    The browser that shows the notebook sends what the person drops (or picks), end to
    end encrypted through a relay, into ``dest`` as p2p_copy.receive() would: streamed,
    verified, resumed after a reload of the page (drop the same files again). Returns a
    handle at once: ``await p2p_copy.drop(dest)`` waits for the files and gives the
    TransferResult, in the same cell or a later one (Run All included). Options as for
    receive(); ``wait_timeout`` bounds the wait for the first file, else it lasts.
    """
    opts = resolve("receive", options, keywords)
    return _start("drop", "drop files into this kernel", {"dest": str(dest)}, opts,
                  lambda url, code, o: receive(url, code, dest, options=o))


def offer(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], *,
          options: Options | None = None,
          **keywords: Unpack[OptionFields]) -> Transfer[TransferResult]:
    """Show a panel with a Save button; send ``paths`` to the browser that shows the notebook.

    The person chooses a file or folder on their computer (Chromium's file system access;
    other browsers are told what they need), and the browser receives into it, verified.
    Returns a handle at once: ``await p2p_copy.offer(paths)`` waits until the files are
    saved and gives the TransferResult, in the same cell or a later one. Options as for
    send(); ``wait_timeout`` bounds the wait for the Save, else it lasts.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    opts = resolve("send", options, keywords)
    return _start("offer", "save files from this kernel to your computer",
                  {"offered": _offered(paths)}, opts,
                  lambda url, code, o: send(url, code, paths, options=o))


def _offered(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """What the Save button describes; the sender checks the files again when it sends."""
    files = dirs = size = 0
    names = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise UsageError(f"offer(): {path} does not exist.")
        names.append(path.name + ("/" if path.is_dir() else ""))
        if path.is_dir():
            for root, _, found in os.walk(path):
                dirs += 1
                files += len(found)
                size += sum(os.path.getsize(os.path.join(root, f)) for f in found)
        else:
            files += 1
            size += path.stat().st_size
    single = len(names) == 1 and not names[0].endswith("/")
    return {"files": files, "dirs": dirs, "bytes": size, "names": names[:5],
            "size": human_size(size), "single": single}


class _PanelTracker(_Tracker):
    """The handle's tracker. The code stays off the kernel's progress panel (the browser
    has it), and that panel is made only once the browser joined: until then the drop
    panel says how it goes, the kernel's waits in the relay (again and again, for as long
    as the panel waits) make no widgets, and a browser that cannot connect leaves no empty
    panel behind."""

    def __init__(self, panel: Any, make: Callable[[], Progress]) -> None:
        super().__init__(NoProgress())
        self.panel = panel
        self._make = make
        self._binds: list[tuple[str, tuple[Any, ...]]] = []

    def attempt(self) -> None:
        """A new wait in the relay, with no display yet."""
        self.inner = NoProgress()
        self._binds.clear()
        self.status, self.joined = "waiting", False

    def bind_cancel(self, cancel: Callable[[], object]) -> None:
        self._binds.append(("bind_cancel", (cancel,)))

    def bind_partial(self, *args: Any) -> None:
        self._binds.append(("bind_partial", args))

    def showing_code(self, server: str, code: str) -> None:
        # Kept off the handle too (its code and text): shown in a cell, a waiting
        # sender's line would carry the live code into the saved notebook (panel.py).
        pass

    def paired(self) -> None:
        # A panel of its own for each attempt that a browser joined: an earlier one shows
        # how it ended. Shown by its waiting(), in a kernel.
        self.inner = self._make()
        for name, args in self._binds:
            optional(self.inner, name, *args)
        self.inner.waiting()
        super().paired()
        self.panel.state, self.panel.message = "running", ""


Run = Callable[[str, str, Options], Coroutine[Any, Any, TransferResult]]


def _start(mode: Literal["drop", "offer"], what: str, traits: dict[str, Any], opts: Options,
           run: Run) -> Transfer[TransferResult]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise UsageError(f"p2p_copy.{mode}() runs in a notebook's kernel (its event loop), "
                         "and there is none here.") from None
    panel = panel_class(mode)(what, mode=mode, code=generate_code(), **traits)
    from IPython.display import display  # a notebook's call: IPython is there

    display(panel)  # type: ignore[no-untyped-call]
    label = "receive" if mode == "drop" else "send"
    # The progress panel comes with the first transfer: a notebook run without a browser
    # (nbclient, CI) shows none that never moves.
    tracker = _PanelTracker(panel, lambda: make_progress(opts.progress, label))
    cell = _current_cell()
    _replace_earlier(cell)
    work = _serve(panel, tracker, opts, run)
    return Transfer("receiver" if mode == "drop" else "sender", work, tracker, cell)


async def _serve(panel: Any, tracker: _PanelTracker, opts: Options,
                 run: Run) -> TransferResult:
    """The kernel's side: in the relay from the start, until a transfer ends well; unless
    no front end shows the panel."""
    try:
        route = await _route()
        opts = dataclasses.replace(opts, cafile=opts.cafile or route.cafile,
                                   relay_token=opts.relay_token or route.token)
        # The browser needs the token only for the user's relay (the kernel's is public).
        panel.relay_token = opts.relay_token if route.browser_url else None
        panel.relay_url, panel.proxy_port = route.browser_url, route.proxy_port
        panel.state = "ready"
        serving = asyncio.ensure_future(_transfers(panel, tracker, route.url, opts, run))
        watching = asyncio.ensure_future(_watch_for_a_view(panel))
        telling = asyncio.ensure_future(_tell_the_views(panel))
        try:
            await asyncio.wait({serving, watching}, return_when=asyncio.FIRST_COMPLETED)
            if watching.done():
                watching.result()  # raises if no front end shows the panel
            return await serving
        finally:
            watching.cancel()
            telling.cancel()
            if not serving.done():
                serving.cancel()
                await asyncio.wait({serving})  # the transfer's own cleanup
    except (P2PCopyError, asyncio.CancelledError) as exc:
        panel.state = "failed"
        panel.message = "Cancelled." if isinstance(exc, (asyncio.CancelledError,
                                                         CancelledError)) else str(exc)
        raise


async def _transfers(panel: Any, tracker: _PanelTracker, url: str, opts: Options,
                     run: Run) -> TransferResult:
    """A transfer each time the last one was cut, at once: the kernel waits in the relay
    for the browser (which continues from what arrived), never for a word from the view."""
    while True:
        tracker.attempt()
        try:
            result = await run(url, panel.code, dataclasses.replace(opts, progress=tracker))
        except _AGAIN as exc:
            if not tracker.joined:
                # Nobody came: the relay's wait ran out (join again, unless the user set a
                # wait_timeout), or the relay went away. A browser that joins meanwhile
                # waits there for the kernel.
                if isinstance(exc, TransferTimeoutError) and opts.wait_timeout is not None:
                    raise
                await asyncio.sleep(REJOIN_DELAY)
                continue
            panel.state, panel.message = "interrupted", str(exc)
            continue
        panel.state = "done"
        count = len(result.files)
        panel.message = f"{count} file{'' if count == 1 else 's'}, {human_size(result.bytes)}"
        return result


async def _tell_the_views(panel: Any) -> None:
    """The code and token to the panel's views every SECRETS_EVERY s until the transfer
    ends: a view asks for them when it shows and when it starts, but an ipykernel older
    than 7.4 hears no view while a cell runs (one that awaits this handle); what the kernel
    sends reaches the views all the same."""
    while True:
        # A comm that cannot send now (closed, say) must not end the telling: the views
        # that are there get the next one, and the transfer needs none of it.
        with contextlib.suppress(Exception):
            panel.send_secrets()
        await asyncio.sleep(SECRETS_EVERY)


async def _watch_for_a_view(panel: Any) -> None:
    """Raise NO_WIDGETS once VIEW_TIMEOUT passed with no view shown and nobody joined (a
    script, nbclient, a front end without widgets), if the kernel could have heard a view."""
    try:
        await asyncio.wait_for(panel.view_shown.wait(), VIEW_TIMEOUT)
    except TimeoutError:
        if panel.state == "ready" and _hears_the_panel_during_a_cell():
            raise UsageError(NO_WIDGETS.format(what=panel._what)) from None


def _hears_the_panel_during_a_cell() -> bool:
    """Whether the panel's messages reach this kernel while a cell runs (one that awaits
    the handle, say). ipykernel 7.4 handles comm messages during a cell; older ones queue
    them until the cell ends, so there a panel not heard from may well be on screen (the
    transfer works all the same: it needs no message). Outside a kernel, nothing queues."""
    kernel = sys.modules.get("ipykernel")
    if kernel is None or not in_jupyter_kernel():
        return True
    return tuple(getattr(kernel, "version_info", (0,)))[:2] >= (7, 4)
