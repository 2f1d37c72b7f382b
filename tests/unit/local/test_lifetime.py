"""`dying_with_parent`: a child started with it ends when the process that started it is killed
outright, and otherwise runs exactly its command."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from quantship.local import lifetime

LAUNCHER = textwrap.dedent(
    """
    import subprocess, sys, time
    from quantship.local.lifetime import dying_with_parent
    sleeper = [sys.executable, "-c", "print('up', flush=True); import time; time.sleep(60)"]
    child = subprocess.Popen(dying_with_parent(sleeper), stdout=subprocess.PIPE, text=True)
    child.stdout.readline()  # running its command: setpriv has asked for the signal and exec'd it
    print(child.pid, flush=True)
    time.sleep(60)
    """
)


def _alive(pid: int) -> bool:
    """Running, not a zombie: an orphan whose new parent does not reap it has ended all the same."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_child_ends_when_its_parent_is_killed() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(lifetime.__file__).parents[2])}
    launcher = subprocess.Popen(_python(LAUNCHER), stdout=subprocess.PIPE, text=True, env=env)
    assert launcher.stdout is not None
    child = int(launcher.stdout.readline())
    try:
        assert _alive(child)
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived a kill -9 of its parent"
    finally:
        if _alive(child):
            os.kill(child, 9)


def test_the_command_runs_unchanged_after_the_prefix() -> None:
    """setpriv execs the command itself: same arguments, same exit status, same output."""
    command = [*_python("import sys; print(sys.argv[1:]); sys.exit(3)"), "a b", "--c"]
    result = subprocess.run(lifetime.dying_with_parent(command), capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (3, "['a b', '--c']"), result.stderr
