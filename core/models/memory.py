"""Keep peak memory flat while scoring many checkpoints on CPU.

Scoring allocates and frees large (tokens x vocabulary) buffers once per checkpoint. glibc's malloc serves
buffers above its mmap threshold with mmap and returns them to the OS on free, but it raises that
threshold dynamically after the first free (up to 32 MiB), after which such buffers come from the heap
and fragment it: measured here, peak RSS grew about 80 MB per checkpoint scored.

Remedies, measured on 2 CPU cores: pinning the threshold at 1 MiB kept peak memory flat but made every
mid-size buffer a fresh mmap whose pages fault in on each use (scoring the sample world took 2x as long);
``malloc_trim(0)`` after every checkpoint kept resident memory flat but not the peak. Pinning at 8 MiB
(``pin_mmap_threshold``, which also stops the dynamic raise) keeps heap reuse for mid-size buffers and
returns the large ones: flat peaks at no measurable cost. At vocabulary 151,936 the statistics' per-chunk
rank temporary (55 rows x V booleans) is 8.36 MB, just under 8 MiB: from the heap, interleaved with the
chunks' small results, it fragmented it, and the peak of one 4,096-token row varied from 0.2 to 1.4 GB
between identical runs; at 4 MiB it stayed at 0.22-0.25 GB, no slower. The scorer calls it. No-ops off glibc.
The price was a fresh mmap, its pages zero-filled by the kernel, for every such buffer: at vocabulary 151,936
about 40 % of scoring's CPU time (issue 27). Scoring now makes its chunks' matrices once per call and reuses
them (``core.drift.buffers``): they fault in once, and the pin still keeps the rest of the heap flat.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # from <malloc.h>
_done = False
_libc = None


def _glibc():
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = lib if hasattr(lib, "mallopt") else False
        except OSError:
            _libc = False
    return _libc or None


def pin_mmap_threshold(threshold: int = 4 << 20) -> bool:
    """Serve allocations >= ``threshold`` bytes by mmap from now on; True if it took effect."""
    global _done
    lib = _glibc()
    if not _done and lib is not None:
        _done = bool(lib.mallopt(M_MMAP_THRESHOLD, threshold))
    return _done
