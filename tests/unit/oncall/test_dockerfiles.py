"""The two Dockerfiles cannot be built here (no Docker): check what a review would, by parsing them.
Multi-stage on python:3.11-slim, `pip install .` of this repository, a numeric non-root user in the
final stage, and the entrypoint of the right subcommand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from quantship import cli, generate

IMAGES = {"server": ["quantship", "serve"], "operator": ["quantship", "operator"]}


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())  # join continuation lines
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_builds_in_two_slim_stages_and_runs_as_a_numeric_non_root_user(image: str) -> None:
    steps = instructions(generate.ROOT / image / "Dockerfile")
    stages = [args for op, args in steps if op == "FROM"]
    assert len(stages) == 2 and all(stage.startswith("python:3.11-slim") for stage in stages)
    final = steps[[i for i, (op, _) in enumerate(steps) if op == "FROM"][-1] :]
    users = [args for op, args in final if op == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1]), users
    assert any(op == "COPY" and args.startswith("--from=") for op, args in final)
    assert not any(op == "RUN" and "pip install" in args for op, args in final), (
        "no installs in the final stage"
    )


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_installs_this_repository_and_runs_its_subcommand(image: str) -> None:
    steps = instructions(generate.ROOT / image / "Dockerfile")
    assert any(op == "RUN" and re.search(r"pip install .*\s\.$", args) for op, args in steps)
    for op, args in steps:
        if op == "COPY" and not args.startswith("--from="):
            for source in args.split()[:-1]:
                assert (generate.ROOT / source).exists(), f"{image}/Dockerfile copies missing {source}"
    entrypoint = [json.loads(args) for op, args in steps if op == "ENTRYPOINT"]
    assert entrypoint[-1] == IMAGES[image]
    assert IMAGES[image][1] in cli.main.commands, f"`quantship {IMAGES[image][1]}` does not exist"
