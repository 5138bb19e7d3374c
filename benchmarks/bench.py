#!/usr/bin/env python3
"""Benchmark p2p-copy against a raw TCP relay, a minimal Python websockets relay,
p2p-copy 0.1.1 and magic-wormhole (issue 6), on loopback only, every output verified.
The code is the package benchmarks/harness/ (its __init__ says which module does what);
benchmarks/README.md says what is measured and how.

    python benchmarks/bench.py                      # full run: 1 GiB, 10,000 files, 1000 pairs
    python benchmarks/bench.py --size 256MiB        # quicker
    python benchmarks/bench.py --quick --only ours,baseline --json /tmp/x.json   # smoke
"""

import sys
from pathlib import Path

# The measured helper processes run this file with other interpreters too (the venvs'
# pythons of 0.1.1 and ours), so the package is found next to it, not through an install.
sys.path.insert(0, str(Path(__file__).resolve().parent))

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        # ``bench.py _NAME ARGS``: a helper process, which is measured: it imports only
        # what it runs.
        from harness.helpers import helper_main

        sys.exit(helper_main(sys.argv[1:]))
    from harness.run import main

    sys.exit(main())
