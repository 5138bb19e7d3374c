"""The relay server: pairs peers by room, forwards their messages, and stays up under load.

``server`` runs the connections, ``pairing`` matches peers, ``admission`` applies the
limits, ``forwarding`` moves frames between partners, ``metrics`` and ``logs`` report.
"""

from .server import Relay, RelayConfig, run_relay

__all__ = ["Relay", "RelayConfig", "run_relay"]
