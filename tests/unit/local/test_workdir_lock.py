"""The demo's workdir lock, where it cannot be taken: one line naming the lock file, not an errno."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from quantship.local import workdir_lock


def test_a_lock_file_that_cannot_be_opened_is_named_with_what_to_do(tmp_path: Path) -> None:
    """Something else of the lock's name in the workdir (here a folder; on NFS without locks, flock's
    ENOLCK): the demo printed the bare OSError (`[Errno 37] No locks available` names no file) and
    nothing on what to do."""
    (tmp_path / workdir_lock.LOCK_FILE).mkdir()
    result = subprocess.run(
        [Path(sys.executable).parent / "quantship", "demo", "--workdir", tmp_path, "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr  # refused, as a busy workdir is
    assert result.stderr.strip().splitlines() == [
        f"error: cannot lock {tmp_path / workdir_lock.LOCK_FILE} (Is a directory), which keeps two demos "
        "from sharing a workdir: give --workdir a folder on a local disk you can write"
    ]
