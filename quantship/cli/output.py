"""Where the commands print (`stdout`, `stderr`: rich consoles) and words more than one of them
prints."""

from __future__ import annotations

import sys

from rich.console import Console

from quantship import artifact

# Piped output (CI logs, files) gets room for the summary tables instead of rich's 80 columns.
stdout = Console(width=None if sys.stdout.isatty() else 120)
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def signature_in_words(loaded: artifact.Artifact, *, checked: bool) -> str:
    if checked:
        return "signature valid"
    return "signed, signature not checked" if loaded.signed else "unsigned"
