"""The allocator's settings for a process that holds large answers while it relays them.

glibc hands freed memory back to the kernel as soon as more than 128 KiB of it sits at the top
of the heap. A 16 MB answer is read in pieces of about 256 KB that live until it is sent, so
each call wrote into pages fresh from the kernel, faulted in and zeroed on first touch: a third
of the gateway's CPU on large answers (bench/relay.py, scenario B). Keeping up to TRIM_BYTES
free for the next answer removes that; the peak is the same, since at the peak it is all in use,
and an idle process keeps at most that much more. Blocks up to MMAP_BYTES come from the heap,
where the same holds (above a threshold that glibc otherwise moves, they are mapped afresh).

An operator's own MALLOC_TRIM_THRESHOLD_ or MALLOC_MMAP_THRESHOLD_ (glibc reads them at start)
wins; on a C library without mallopt (macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import os

TRIM_BYTES = 128 * 1024 * 1024
MMAP_BYTES = 4 * 1024 * 1024
# mallopt's parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Apply the settings above, unless the operator set their own; whether they apply."""
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        # The symbols the process already has: the C library's, whichever it is.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES) and mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES))
