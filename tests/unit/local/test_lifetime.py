"""`die_with_parent`: a child started with it ends when the process that started it is killed
outright, and one whose parent is already gone when it starts never runs its command."""

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
    from quantship.local.lifetime import die_with_parent
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    child = subprocess.Popen(sleeper, preexec_fn=die_with_parent())
    print(child.pid, flush=True)
    time.sleep(60)
    """
)

# The preexec function is made in this process, the child is forked by a process forked from it: by
# the time the child asks for the signal its parent is not the one the function was made for.
FORKED_LAUNCHER = textwrap.dedent(
    """
    import os, subprocess, sys
    from quantship.local.lifetime import die_with_parent
    in_child = die_with_parent()
    if os.fork() == 0:
        child = subprocess.Popen([sys.executable, "-c", "print('ran')"], preexec_fn=in_child,
                                 stdout=subprocess.PIPE, text=True)
        output, _ = child.communicate()
        print(child.returncode, repr(output), flush=True)
        os._exit(0)
    os.wait()
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


def test_a_child_whose_parent_is_already_gone_exits_before_its_command() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(lifetime.__file__).parents[2])}
    result = subprocess.run(_python(FORKED_LAUNCHER), capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.split() == ["1", "''"], result.stdout + result.stderr
