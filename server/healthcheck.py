#!/usr/bin/env python3
"""Container health check: exit 0 if the relay on this host answers GET /healthz.

    p2p-copy-healthcheck [PORT]      (default 8443)

Tries https:// first (the image's default, with a certificate for the public name, so
the certificate is not verified here) and then plain http:// (``--no-tls``, behind nginx).
"""

import ssl
import sys
import urllib.request


def main() -> int:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8443
    unverified = ssl._create_unverified_context()
    for scheme in ("https", "http"):
        try:
            with urllib.request.urlopen(
                f"{scheme}://127.0.0.1:{port}/healthz", context=unverified, timeout=3
            ) as response:
                if response.status == 200:
                    return 0
        except OSError:
            continue
    return 1


if __name__ == "__main__":
    sys.exit(main())
