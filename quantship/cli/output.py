"""Where the commands print (`stdout`, `stderr`: rich consoles) and words more than one of them
prints."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from quantship import artifact

# Piped output (CI logs, files) gets room for the summary tables instead of rich's 80 columns.
stdout = Console(width=None if sys.stdout.isatty() else 120)
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def signature_in_words(loaded: artifact.Artifact, *, checked: bool) -> str:
    if checked:
        return "signature valid"
    return "signed, signature not checked" if loaded.signed else "unsigned"


def warn_of_a_failed_gate(loaded: artifact.Artifact, shown_as: Path, doing: str) -> None:
    """A best effort (an artifact whose accuracy gate failed: quantize writes it to OUT.gate-failed,
    verify exits 1 on it) is said before it is pushed or packed, which go on: a rollout would judge
    it only by its canary. `doing`: what goes on with it ("pushing")."""
    if loaded.gate == "failed":
        stderr.print(
            f"[yellow]warning:[/] {shown_as}: its accuracy gate failed (a best effort; `quantship verify` "
            f"exits 1 on it): {doing} it as it is",
            highlight=False,
            soft_wrap=True,
        )
