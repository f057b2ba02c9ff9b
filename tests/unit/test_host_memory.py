"""profiles.host.keep_freed_memory: freed memory is reused, not faulted back in.

Counted, not timed, in fresh interpreters (the setting is process-wide): page faults per
40 MB block malloc'ed, written and freed, with glibc's defaults and with the setting the
agents and the compute profiler start with. 40 MB is above the largest threshold glibc
adapts to by itself (32 MB), so by default every such block is a fresh mmap. A training
step's blocks are smaller, and glibc's own adaptation catches some of them: over a VGG-5
step at B = 100 (one thread) this host measured 953-11,481 faults by default, varying from
process to process, and 640-960 with the setting."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

BLOCK_FAULTS = """
import ctypes, resource, sys
from profiles.host import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def use(size=40_000_000):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
use()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    use()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


def faults_per_block(mode: str) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", BLOCK_FAULTS, mode], capture_output=True,
                          text=True, timeout=60, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    applied, faults = done.stdout.split()
    return applied, int(faults)


def test_freed_memory_is_reused_instead_of_faulted_back_in():
    if not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.skip("the C library here is not glibc (no mallopt): the agents run with its "
                    "own allocator settings")
    default, kept = faults_per_block("default"), faults_per_block("keep")
    pages = 40_000_000 // 4096
    assert default == ("None", pytest.approx(pages, rel=0.1))   # every block a fresh mmap
    assert kept[0] == "True" and kept[1] < pages / 100, kept    # the same memory again
