"""Where the command line finds the relay when it is not typed: the user's defaults.

In order: the relay given on the command line (first argument or ``--relay``),
``$P2P_COPY_RELAY``, then ``relay`` in the config file. The config file's ``cafile`` and
``relay_token`` go with its ``relay``: they are used when the relay in use is that one,
whichever way it was chosen, so that a ``--relay`` to another relay does not get a CA or
a token meant for this one. ``--cafile`` and ``--relay-token`` (or its variable) win.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import UsageError

if TYPE_CHECKING:
    from .serve import Served

__all__ = ["RELAY_ENV", "Defaults", "Relay", "choose_relay", "config_path", "is_relay_url",
           "load_defaults", "served_relay"]

#: Environment variable with the default relay's URL.
RELAY_ENV = "P2P_COPY_RELAY"
#: The keys a config file may hold, each a string.
KEYS = ("relay", "cafile", "relay_token")

#: Where the relay came from: typed on this command line, a default of this user, or
#: served by this process for the transfer (--serve).
Source = Literal["argument", "env", "config", "served"]


def is_relay_url(text: str) -> bool:
    """Whether a command-line argument names a relay (the seed's first positional)."""
    return text.lower().startswith(("ws://", "wss://"))


def config_path() -> Path:
    """``$XDG_CONFIG_HOME/p2p-copy/config.toml``, by default under ``~/.config``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "p2p-copy" / "config.toml"


@dataclass(frozen=True)
class Defaults:
    """What the config file says; every field may be missing."""

    path: Path
    relay: str | None = None
    cafile: str | None = None
    relay_token: str | None = None


@dataclass(frozen=True)
class Relay:
    """The relay a transfer uses, with where it came from and what goes with it."""

    url: str
    source: Source
    cafile: str | None
    token: str | None
    #: The pinned certificate's SHA-256 (--fingerprint, or our own served relay's).
    fingerprint: str | None = None
    #: The relay this process serves (--serve); ``url`` is how this side reaches it.
    served: Served | None = None

    @property
    def is_default(self) -> bool:
        """Whether the user did not type it (it came from the environment or the config)."""
        return self.source in ("env", "config")


def load_defaults(path: Path | None = None) -> Defaults:
    """The config file's values; a missing file is no defaults, a bad one a UsageError."""
    import tomllib  # only a send or receive reads it, not --help or the relay

    from .report import shell_word, shown_path  # report imports this module

    path = path or config_path()
    shown = shown_path(path, quoted=True)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
            mode = os.fstat(f.fileno()).st_mode
    except FileNotFoundError:
        return Defaults(path)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"Cannot read the config file {shown}: {reason}.") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise UsageError(f"The config file {shown} has unknown keys: {', '.join(unknown)}. "
                         f"It may hold: {', '.join(KEYS)}.")
    for key, value in data.items():
        if not isinstance(value, str) or not value:
            raise UsageError(f"In the config file {shown}, {key} must be a non-empty "
                             f"string in quotes, e.g. {key} = \"...\".")
    relay = data.get("relay")
    if relay is not None and not is_relay_url(relay):
        raise UsageError(f"In the config file {shown}, relay must be a ws:// or wss:// "
                         f"URL, not {relay!r}.")
    # Windows has no such bits (os.stat makes every file look readable by all) and no chmod.
    if "relay_token" in data and mode & (stat.S_IRWXG | stat.S_IRWXO) \
            and sys.platform != "win32":
        # As ssh does for keys: a token others can read is a token others can use.
        print(f"p2p-copy: warning: the config file {path} holds a relay token and others may "
              f"read it: chmod 600 {shell_word(str(path))}", file=sys.stderr)
    cafile = data.get("cafile")
    if cafile is not None:
        # Relative to the file, so that the file works from any folder.
        cafile = str(path.parent / os.path.expanduser(cafile))
    return Defaults(path, relay=relay, cafile=cafile, relay_token=data.get("relay_token"))


def choose_relay(typed: str | None, *, cafile: str | None, token: str | None,
                 token_env: str, fingerprint: str | None = None) -> Relay:
    """The relay to use and its CA and token: typed ones first, then the user's defaults."""
    env = os.environ.get(RELAY_ENV) or None
    defaults = load_defaults()
    source: Source
    if typed:
        url, source = typed, "argument"
    elif env:
        url, source = env, "env"
    elif defaults.relay:
        url, source = defaults.relay, "config"
    else:
        raise UsageError(
            f"Which relay? Give --relay wss://HOST, set ${RELAY_ENV}, or put "
            f"relay = \"wss://HOST\" in {config_path()}.")
    if not is_relay_url(url):
        raise UsageError(f"The relay must be a ws:// or wss:// URL, not {url!r}.")
    token = token or os.environ.get(token_env) or None
    if defaults.relay is not None and defaults.relay.rstrip("/") == url.rstrip("/"):
        # A pinned certificate needs no CA (and the two together are refused).
        cafile = cafile or (None if fingerprint else defaults.cafile)
        token = token or defaults.relay_token
    return Relay(url, source, cafile, token, fingerprint)


def served_relay(served: Served) -> Relay:
    """The relay this process serves, as its own peer reaches it: on loopback, pinned."""
    return Relay(served.local_url, "served", None, None, served.fingerprint, served)
