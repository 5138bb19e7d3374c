"""The panel a notebook shows for drop() and offer(): an anywidget with the browser peer.

Its JavaScript is one ES module, web/static/widget.js (built from web/src/widget/ with the
core and the page's storage modules). The traits are the conversation: the kernel writes
where the relay is, the code and how its side is doing; the browser writes that a view is
on screen, how often the person started, and why the browser gave up. One thing is no
trait: a private relay's access token, which the kernel sends only when a view asks, in a
custom message (``relay_token``). Bytes never pass through the widget's messages: they go
through the relay.
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
        code = traitlets.Unicode("").tag(sync=True)
        #: drop: the kernel's folder, as the person reads it; offer: what is offered.
        dest = traitlets.Unicode("").tag(sync=True)
        offered = traitlets.Dict().tag(sync=True)
        #: The kernel's side: starting, ready, running, interrupted, done, failed.
        state = traitlets.Unicode("starting").tag(sync=True)
        message = traitlets.Unicode("").tag(sync=True)
        #: The browser's side: views rendered, starts asked for, its last error.
        views = traitlets.Int(0).tag(sync=True)
        started = traitlets.Int(0).tag(sync=True)
        browser_error = traitlets.Unicode("").tag(sync=True)

        def __init__(self, what: str, **traits: Any) -> None:
            super().__init__(**traits)
            self._what = what
            self.view_shown = asyncio.Event()
            self.start_asked = asyncio.Event()
            self.gave_up = asyncio.Event()
            # The events belong to the kernel's loop, but the observers may run in another
            # thread: ipykernel 7 hands a comm's messages to the subshell that last sent on
            # it, and a front end that sends from a subshell of its own (JupyterLab's
            # widgets) gets our answer to its custom message from that one.
            self._loop = asyncio.get_running_loop()
            self.observe(lambda _: self._set(self.view_shown), names="views")
            self.observe(lambda _: self._set(self.start_asked), names="started")
            self.observe(self._browser_failed, names="browser_error")
            # The access token of the relay the browser uses, when it is private. Not a
            # trait: traits are widget state, which a front end may save in the notebook
            # (JupyterLab's "Save Widget State Automatically", nbconvert, Voila), and a
            # token must not travel with a shared .ipynb. A view asks for it with a custom
            # message each time it starts a transfer; the answer goes to the live views
            # of this kernel only (the person's own authenticated front ends) and the view
            # keeps it for that transfer alone.
            self.relay_token: str | None = None
            self.on_msg(self._custom_message)

        def _custom_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
            if isinstance(content, dict) and content.get("ask") == "relay_token":
                self.send({"relay_token": self.relay_token or ""})

        def _browser_failed(self, change: dict[str, Any]) -> None:
            if change["new"]:
                self._set(self.gave_up)

        def _set(self, event: asyncio.Event) -> None:
            """Set ``event`` in the kernel's loop, from whichever thread observed."""
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                self._loop.call_soon_threadsafe(event.set)

        def __repr__(self) -> str:
            # The text/plain of the display bundle: all a front end without widgets shows.
            return NO_WIDGETS.format(what=self._what)

    _CLASS = Panel
    return Panel

