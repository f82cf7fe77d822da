"""The start of a Python script a test runs in a child process under the kernel's rule that systemd's
MemoryDenyWriteExecute=yes sets (PR_SET_MDWE, Linux >= 6.3): no memory page may be made writable and executable.

The script exits 3 (``unsupported <errno>``) on a kernel without the rule and 4 (``not enforced``) when a W+X page
can still be mapped; a test skips on both. The caller appends what must work under the rule.
"""

from __future__ import annotations

__all__ = ["MDWE_PRELUDE"]

MDWE_PRELUDE = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print("unsupported", ctypes.get_errno()); sys.exit(3)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("not enforced"); sys.exit(4)
except OSError:
    pass
"""
