"""Children that end with the process that started them: a `kill -9` of the demo orphans nothing.

The demo starts its servers and Prometheus in sessions of their own (`start_new_session`), so a
Ctrl-C in the terminal reaches only the demo, which stops them in order. That also shields them
from the terminal, so when the demo itself is killed outright (SIGKILL, an OOM kill) nothing else
would stop them: they went on listening under PID 1. On Linux each child therefore asks the kernel,
between fork and exec, for SIGTERM when its parent goes (prctl PR_SET_PDEATHSIG, kept across exec):
the servers drain and Prometheus closes its database as on a plain `kill`.

The kernel's "parent" is the thread that forked the child, not the whole process: start children
from a thread that lives as long as they should (the demo's event loop thread does). If the parent
died before the child's prctl ran, the signal will never come: the child sees a new parent and
exits before exec. Elsewhere (macOS) `die_with_parent` gives None and children outlive a SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_ORPHANED_AT_START = 1

# Looked up once here, not in the child: between fork and exec the child runs no more than it must.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen`: the child gets `sig` when the calling thread ends.
    None where the platform has no such request."""
    prctl = _prctl
    if prctl is None:
        return None
    parent = os.getpid()
    signal_number = ctypes.c_ulong(sig.value)
    unused = ctypes.c_ulong(0)

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal_number, unused, unused, unused)
        if os.getppid() != parent:  # the parent ended between fork and prctl: nobody will signal us
            os._exit(_ORPHANED_AT_START)

    return in_child
