"""The panel a notebook shows for drop() and offer(): an anywidget with the browser peer.

Its JavaScript is one ES module, web/static/widget.js (built from web/src/widget/ with the
core and the page's storage modules). The kernel writes the traits: where the relay is and
how its side is doing. The code and a private relay's token are no traits: traits are
widget state, which a front end may save in the notebook (JupyterLab's "Save Widget State
Automatically", nbconvert, Voila), and while the panel waits its code is live in the relay.
The kernel sends both to the panel's live views in a custom message (``send_secrets()``):
when a view asks (``{"ask": "secrets"}``), and every SECRETS_EVERY seconds until the
transfer ends (drop.py), for a view that asks while a cell runs in an ipykernel older than
7.4, which hears nothing until the cell ends (a page reloaded mid-transfer asks again). The view writes no traits either: it also tells the
kernel that it is on screen (``{"event": "shown"}``). Custom messages, because a cell may be
awaiting the transfer (Run All, or one cell ``await p2p_copy.drop(...)``): ipykernel 7.4
handles a comm message during a cell but reports no idle status for it, and the widget
manager sends a view's next trait change only after the idle of its last one, so every
change after the first would wait forever. Custom messages are not held back. Bytes never
pass through the widget's messages: they go through the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ..errors import UsageError

__all__ = ["panel_class", "NO_WIDGETS"]

#: What a front end without Jupyter widgets shows instead of the panel.
NO_WIDGETS = ("p2p-copy: this panel needs a notebook front end with Jupyter widgets "
              "(JupyterLab or Notebook 7 in a browser): open the notebook there to {what}.")

_MISSING = ("p2p_copy.{name}() needs anywidget in the kernel's environment (and "
            "jupyter-server-proxy in the Jupyter server's): pip install anywidget "
            "'jupyter-server-proxy>=4.2', or pip install -e '.[jupyter]' in the p2p-copy checkout.")

_CLASS: type[Any] | None = None


def panel_class(name: str) -> type[Any]:
    """The widget class, made on first use: anywidget is imported only here."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    try:
        import anywidget  # type: ignore[import-untyped,unused-ignore]
        import traitlets
    except ImportError:
        raise UsageError(_MISSING.format(name=name)) from None
    from ..web import STATIC

    class Panel(anywidget.AnyWidget):  # type: ignore[misc,unused-ignore]
        _esm = (STATIC / "widget.js").read_text("utf-8")
        _css = (STATIC / "widget.css").read_text("utf-8")
        #: "drop" (the browser sends into the kernel) or "offer" (the kernel sends).
        mode = traitlets.Unicode("drop").tag(sync=True)
        #: The relay the browser uses; empty: the kernel's own, at proxy/<proxy_port>/ of
        #: the Jupyter server that serves the page (jupyter-server-proxy).
        relay_url = traitlets.Unicode("").tag(sync=True)
        proxy_port = traitlets.Int(0).tag(sync=True)
        #: drop: the kernel's folder, as the person reads it; offer: what is offered.
        dest = traitlets.Unicode("").tag(sync=True)
        offered = traitlets.Dict().tag(sync=True)
        #: The kernel's side: starting, ready (waiting in the relay), running (a browser
        #: joined), interrupted (waiting again), done, failed.
        state = traitlets.Unicode("starting").tag(sync=True)
        message = traitlets.Unicode("").tag(sync=True)

        def __init__(self, what: str, *, code: str, **traits: Any) -> None:
            super().__init__(**traits)
            self._what = what
            #: The code the kernel waits in the relay with (a secret while it waits).
            self.code = code
            self.view_shown = asyncio.Event()
            # The event belongs to the kernel's loop, but the message handler may run in
            # another thread: ipykernel 7 hands a comm's messages to the subshell that last
            # sent on it, and a front end that sends from a subshell of its own (JupyterLab's
            # widgets) gets our answer to its custom message from that one.
            self._loop = asyncio.get_running_loop()
            # The access token of the relay the browser uses, when it is private. Like the
            # code, it goes to the live views of this kernel only (the person's own
            # authenticated front ends), which keep it in memory.
            self.relay_token: str | None = None
            self.on_msg(self._custom_message)

        def send_secrets(self) -> None:
            """The code and the token (empty: none needed), to the views on screen now."""
            self.send({"code": self.code, "relay_token": self.relay_token or ""})

        def _custom_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
            if not isinstance(content, dict):
                return
            if content.get("ask") == "secrets":
                self.send_secrets()
            elif content.get("event") == "shown":
                # Set in the kernel's loop, from whichever thread handles the message.
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    self._loop.call_soon_threadsafe(self.view_shown.set)

        def __repr__(self) -> str:
            # The text/plain of the display bundle: all a front end without widgets shows.
            return NO_WIDGETS.format(what=self._what)

    _CLASS = Panel
    return Panel

