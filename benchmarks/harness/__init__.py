"""The benchmark behind ``python benchmarks/bench.py`` (see benchmarks/README.md).

- run.py: the command line, the interleaved repetitions, the results file;
- cases.py: the data of each case, and one measurement of one tool on one case;
- tools.py: what a tool is (its relay, its two commands) and the virtualenvs;
- ours.py: this repository's package, installed from the working tree into a venv, over
  ws://, over wss:// (the relay terminating TLS) and behind the shipped nginx (TLS);
- baselines.py: socat (256 KiB, 8 KiB, and with OpenSSL on both legs), wsmin,
  p2p-copy 0.1.1, magic-wormhole;
- tls.py: the run's certificates (trustme if importable, else openssl req);
- longlink.py: a long, window-limited link in user space (the longlink case);
- measure.py: the launcher, the measured processes, /proc, medians and ratios;
- report.py: the printed tables, the Markdown tables, the plot;
- helpers.py: the processes bench.py runs for the Python baselines and the pairs clients.

Only the standard library is needed here (nothing is imported from the repository's
package, so that the venvs' pythons can run the helpers); the wsmin helpers need websockets
and cryptography in the current interpreter; matplotlib is used if --plot is given and
present.
"""

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent
REPO = BENCHMARKS.parent
#: what every helper subprocess runs (``python SCRIPT _helper ...``): the thin entry point,
#: which any python can run, the venvs' too
SCRIPT = str(BENCHMARKS / "bench.py")
CACHE = REPO / ".cache"
SEED_VENV = CACHE / "seed-venv"  # shared with tests/seed.py (same lock file)
SEED_VERSION = "0.1.1"
WORMHOLE_VENV = CACHE / "wormhole-venv"
WORMHOLE_PACKAGES = ["magic-wormhole", "magic-wormhole-mailbox-server",
                     "magic-wormhole-transit-relay"]
OURS_VENV = CACHE / "ours-venv"  # the working tree, installed non-editable
#: in OURS_VENV: SHA-256 of pyproject.toml + p2p_copy/ as last installed there
OURS_STAMP = "p2p-copy-source.sha256"
LAUNCHER_DIR = CACHE / "bench"
DEFAULT_JSON = BENCHMARKS / "results" / "latest.json"
#: socat's -b (bytes per read/write). Its default, 8192, runs at ~40 % of what the
#: machine can do; 256 KiB (= our message size) makes the baseline a fair upper bar.
SOCAT_BUFFER = 262144
ALL_TOOLS = ("baseline", "socat8k", "socat-tls", "wsmin", "ours", "ours-lanes", "ours-wss",
             "ours-nginx-tls", "seed", "wormhole")
#: the tools measured over TLS: their per-role ratios are against socat-tls, not baseline
TLS_TOOLS = ("socat-tls", "ours-wss", "ours-nginx-tls")
#: the loopback cases, which every tool takes part in unless it says otherwise
LOOPBACK_CASES = ("random", "compressible", "files", "pairs")
ALL_CASES = (*LOOPBACK_CASES, "longlink")
#: longlink: round-trip times (s) and window (bytes in flight per direction and
#: connection: Linux's default cap on a socket's send buffer, 4 MiB)
LONGLINK_RTTS = (0.0, 0.02, 0.05, 0.1, 0.15)
LONGLINK_WINDOW = 4 << 20
#: longlink's transfer: --size, but at most this by default. 1 GiB at 150 ms through a
#: 4 MiB window (28 MB/s) would take ~40 s a run; 256 MiB is still ~60 windows, so the
#: handshake's few round trips are a few per cent of it.
LONGLINK_MAX_SIZE = 256 << 20
MB = 1e6
GB = 1e9
