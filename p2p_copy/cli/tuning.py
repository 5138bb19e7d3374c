"""Process-wide tuning for the command-line processes (sender, receiver, relay).

Every 256 KiB message makes a few short-lived buffers of its size (websockets' framing,
decryption, socket reads). glibc's malloc gives the top of its heap back to the kernel as
soon as more than 128 KiB are free there and takes it back for the next message, so each
message pays for fresh pages (page faults, zeroing): up to a quarter of the sender's CPU.
Keeping 16 MiB of slack at the top of the heap (``M_TOP_PAD``) stops that churn: measured
on 512 MiB transfers, sender CPU 1.64 → 1.22 s, relay 0.82 → 0.70 s, +17 % throughput,
for at most 16 MiB more address space and no measurable RSS (see benchmarks/README.md).

Buffers of 128 KiB or more come from mmap, a fresh mapping each, page-faulted in and
unmapped at free (glibc stops raising that threshold by itself once ``M_TOP_PAD`` is set).
With lanes the sender keeps each message in a buffer of its own until it is acknowledged,
a new 256 KiB one per message: at 100 ms through the emulated link, 512 MiB cost the sender
1.72-2.15 CPU-s, 1.0 of it in the kernel. Taking buffers up to 4 MiB from the heap
(``M_MMAP_THRESHOLD``) made that 0.87-0.91 (benchmarks/README.md). The receiver: 0.86-1.02
against 0.86-0.97 CPU-s per 512 MiB on loopback, 4 interleaved pairs.

The cyclic garbage collector ran often enough to take ~4 % of the receiver's CPU (py-spy
``--native``), walking objects that live for the whole transfer; collecting the youngest
generation after 50,000 allocations instead of 700 took the sender from 0.96 to 0.85
CPU-s per 512 MiB and 10,000 small files from 0.74 to 0.65 s.

Only the CLI calls :func:`tune_process`: a library must not change the allocator of the
program that imports it (a notebook kernel). ``MALLOC_TOP_PAD_`` in the environment wins
(then neither is set).
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from typing import Final

__all__ = ["GC_THRESHOLDS", "MMAP_THRESHOLD", "TOP_PAD", "tune_process"]

#: Bytes of free memory glibc keeps at the top of the heap instead of returning them.
TOP_PAD: Final = 16 * 2**20
#: Allocations smaller than this come from the heap rather than a mapping of their own.
MMAP_THRESHOLD: Final = 4 * 2**20
_M_TOP_PAD: Final = -2  # glibc's <malloc.h>
_M_MMAP_THRESHOLD: Final = -3
#: gc.set_threshold() for the CLI: the youngest generation is collected 70 times less often.
GC_THRESHOLDS: Final = (50_000, 20, 100)


def tune_process() -> bool:
    """Apply the tuning above; True if the allocator's part applied (glibc only)."""
    # Collect cyclic garbage after 50,000 new objects instead of 700: each message makes a
    # few dozen short-lived objects (frames, events, views) that are freed by refcount.
    gc.set_threshold(*GC_THRESHOLDS)
    if not sys.platform.startswith("linux") or "MALLOC_TOP_PAD_" in os.environ:
        return False
    try:
        # The symbols the interpreter is linked with: libc's, without a (slow) library search.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl (Alpine) has no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_TOP_PAD, TOP_PAD)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
