"""The panel a notebook shows for drop() and offer(): an anywidget with the browser peer.

Its JavaScript is one ES module, web/static/widget.js (built from web/src/widget/ with the
core and the page's storage modules). The traits are the whole conversation: the kernel
writes where the relay is, the code and how its side is doing; the browser writes that a
view is on screen, how often the person started, and why the browser gave up. Bytes never
pass through the widget's messages: they go through the relay.
"""

from __future__ import annotations

import asyncio
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
            self.observe(lambda _: self.view_shown.set(), names="views")
            self.observe(lambda _: self.start_asked.set(), names="started")
            self.observe(self._browser_failed, names="browser_error")

        def _browser_failed(self, change: dict[str, Any]) -> None:
            if change["new"]:
                self.gave_up.set()

        def __repr__(self) -> str:
            # The text/plain of the display bundle: all a front end without widgets shows.
            return NO_WIDGETS.format(what=self._what)

    _CLASS = Panel
    return Panel

