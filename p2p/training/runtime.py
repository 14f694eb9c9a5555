"""Per-process settings of the training step, applied once by every worker (the benchmarks
apply them too, so they measure what training runs).

CUDA: cudnn.benchmark (fixed input sizes: pick the fastest conv kernels) and TF32.
CPU: keep freed memory for reuse (`keep_freed_memory`).
"""

from __future__ import annotations

import torch


def configure_backends(device: torch.device) -> None:
    """Apply the settings above for `device`."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        keep_freed_memory()


def keep_freed_memory() -> None:
    """Make glibc malloc reuse freed memory instead of returning it to the OS.

    PyTorch on CPU allocates every activation and gradient with malloc. glibc serves large
    blocks with fresh mmap()s and gives them back on free, so each training step page-faults
    and zeroes all of its activation memory again (hundreds of MB per step at 256x256). With
    mmap off and heap trimming off, the blocks freed by one step serve the next: the same
    arithmetic, no page faults (what jemalloc/tcmalloc give, without preloading a library). The
    cost: the process keeps its peak heap. A no-op where libc has no mallopt (non-glibc).
    """
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(m_mmap_max, 0)  # large blocks come from the heap too
        libc.mallopt(m_trim_threshold, -1)  # never shrink the heap
    except (OSError, AttributeError):
        pass
