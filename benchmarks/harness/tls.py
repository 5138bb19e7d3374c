"""The run's TLS certificates: made once per run in its temporary folder, for 127.0.0.1.

With ``trustme`` importable in the benchmark's interpreter (the project's test
dependencies have it), a CA and a leaf certificate issued by it, as a real deployment has;
otherwise one self-signed certificate from ``openssl req``, which is its own CA. Both
are ECDSA P-256 with 127.0.0.1 and localhost as subject alternative names, so peers
verify the relay (``--cafile``, socat's ``cafile=``) as they would a real one.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    chain: Path  #: the relay's certificate chain (PEM)
    key: Path  #: its private key (PEM)
    ca: Path  #: what peers trust (PEM)
    how: str  #: "trustme x.y" or "openssl req (...)", for the JSON


def make_certificates(folder: Path) -> Certificates:
    """Certificates for 127.0.0.1 in ``folder``; RuntimeError if neither way works."""
    folder.mkdir(parents=True, exist_ok=True)
    chain, key, ca = folder / "chain.pem", folder / "key.pem", folder / "ca.pem"
    try:
        import trustme
    except ImportError:
        pass
    else:
        authority = trustme.CA()
        leaf = authority.issue_cert("127.0.0.1", "localhost")
        chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        authority.cert_pem.write_to_path(str(ca))
        version = getattr(trustme, "__version__", "")
        return Certificates(chain, key, ca, f"trustme {version}".strip())
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("no certificates: neither trustme nor openssl is installed")
    run = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(chain)],
        capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        raise RuntimeError(f"openssl req failed: {run.stderr.strip()[-300:]}")
    shutil.copyfile(chain, ca)
    return Certificates(chain, key, ca, "openssl req (self-signed, its own CA)")
