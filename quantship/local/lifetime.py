"""Children that end with the process that started them: a `kill -9` of the demo orphans nothing.

The demo starts its servers and Prometheus in sessions of their own (`start_new_session`), so a
Ctrl-C in the terminal reaches only the demo, which stops them in order. That also shields them
from the terminal, so when the demo itself is killed outright (SIGKILL, an OOM kill) nothing else
would stop them: they went on listening under PID 1. On Linux each child is therefore started
through util-linux's `setpriv --pdeathsig TERM`, which asks the kernel for SIGTERM when its parent
goes (prctl PR_SET_PDEATHSIG, kept across the exec of the real command): the servers drain and
Prometheus closes its database as on a plain `kill`.

Why a command prefix and not a `preexec_fn` doing the same prctl: a preexec function makes Python
fork without exec'ing at once, and in a process with gRPC threads (a test session that ran the
gRPC server) gRPC's fork handlers then left the child broken ("epoll_wait error: Bad file
descriptor", the server exited at start). The prefix keeps the plain fork-exec.

The kernel's "parent" is the thread that forked the child, not the whole process: start children
from a thread that lives as long as they should (the demo's event loop thread does). A parent that
dies in the moment between setpriv's start and its prctl leaves that child unsignalled. Without
setpriv (not Linux, or no util-linux) commands run unchanged and children outlive a SIGKILL.
"""

from __future__ import annotations

import shutil
import signal
import sys
from collections.abc import Sequence

SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def dying_with_parent(command: Sequence[str], sig: signal.Signals = signal.SIGTERM) -> list[str]:
    """`command`, started so that it gets `sig` when the thread that starts it ends."""
    if SETPRIV is None:
        return list(command)
    return [SETPRIV, f"--pdeathsig={sig.name.removeprefix('SIG')}", "--", *command]
