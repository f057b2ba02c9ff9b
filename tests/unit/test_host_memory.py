"""profiles.host.keep_freed_memory: a step's blocks come from the heap and stay there.

Checked with glibc's own accounting (mallinfo2, or mallinfo before glibc 2.33), not by
timing, in fresh interpreters (the setting is process-wide) with no MALLOC_* tunables in
their environment. A 16 MB block, the size of a training step's activations: by default
the first one in a process is a fresh mmap, given back to the kernel when freed (and
faulted in again next time); with the setting it is carved from the heap, and the heap
keeps it when freed. Measured on this host: a VGG-5 step at B = 100 took 953-11,481 page
faults by default, varying from process to process, and 640-960 with the setting."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

HEAP_AFTER_ONE_BLOCK = """
import ctypes, sys
from profiles.host import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
field = ctypes.c_size_t if hasattr(libc, "mallinfo2") else ctypes.c_int
class Info(ctypes.Structure):   # struct mallinfo2 (size_t fields), or mallinfo (int fields)
    _fields_ = [(name, field) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                           "usmblks", "fsmblks", "uordblks", "fordblks",
                                           "keepcost")]
info = getattr(libc, "mallinfo2", None) or libc.mallinfo
info.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 16 << 20
before = info().hblks
block = libc.malloc(size)
ctypes.memset(block, 1, size)
mapped_apart = info().hblks - before
libc.free(block)
print(applied, mapped_apart, info().arena >= size)
"""


def heap_after_one_block(mode: str) -> list[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", HEAP_AFTER_ONE_BLOCK, mode], env=env,
                          capture_output=True, text=True, timeout=60, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    return done.stdout.split()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                    reason="the C library here is not glibc: the agents run with its own "
                           "allocator settings")
def test_a_steps_block_comes_from_the_heap_and_stays_there():
    # (applied, mmapped chunks the block added, whether the heap still holds it once freed)
    assert heap_after_one_block("default") == ["None", "1", "False"]
    assert heap_after_one_block("keep") == ["True", "0", "True"]
