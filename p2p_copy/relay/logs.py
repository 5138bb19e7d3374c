"""How the relay writes its logs: plain lines or one JSON object per line.

Relay logs never contain codes, code hashes or request paths (a path holds the hash, and
a short code is cheap to guess back from it). Peer addresses are personal data too: by
default they are blurred to their /24 (IPv4) or /48 (IPv6) network.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import sys
from typing import Any, Literal, get_args

__all__ = ["AddressMode", "ADDRESS_MODES", "show_address", "event", "JsonFormatter",
           "configure_logging"]

#: full: as seen; blur: the /24 or /48 network; none: left out.
AddressMode = Literal["full", "blur", "none"]
ADDRESS_MODES: tuple[str, ...] = get_args(AddressMode)

_PLAIN = (str, int, float, bool)

#: LogRecord attributes that are not fields of an event.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}


def show_address(host: str | None, mode: AddressMode) -> str | None:
    """``host`` as the log may show it under ``mode``; None when it must not appear."""
    if mode == "none" or host is None:
        return None
    if mode == "full":
        return host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "?"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log event ``name`` with ``fields``: ``key=value`` in plain logs, members in JSON.

    Fields whose value is None are left out (e.g. an address under ``none``).
    """
    if not logger.isEnabledFor(level):
        return
    shown = {k: v for k, v in fields.items() if v is not None}
    text = " ".join([name, *(f"{k}={v}" for k, v in shown.items())])
    logger.log(level, "%s", text, extra={"event": name, **shown})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            # Only plain values: objects that libraries attach (websockets adds its
            # connection) have reprs nobody vetted for secrets.
            if key not in _STANDARD and key not in out and isinstance(value, _PLAIN):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str, json_lines: bool) -> None:
    """Log to stderr at ``level``, as plain text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # websockets logs frames at DEBUG, and a hello frame carries the code hash.
    logging.getLogger("p2p_copy.relay.websockets").setLevel(logging.WARNING)
