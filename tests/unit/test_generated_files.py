"""Generated files on disk are exactly what the code generates today."""

from __future__ import annotations

from quantship import generate


def test_generated_files_are_up_to_date() -> None:
    stale = [
        relative
        for relative, render in generate.outputs().items()
        if not (generate.ROOT / relative).is_file() or (generate.ROOT / relative).read_text() != render()
    ]
    assert not stale, f"run `make generate`; stale: {stale}"
