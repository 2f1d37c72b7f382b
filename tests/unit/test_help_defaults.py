"""A help text that names a default's constant and shows its value, `Default: quantship.oci.TIMEOUT_S
(120)`, shows the value the constant holds: the number is written a second time there (the CLI does
not import the registry's module to say it), so a test keeps the two together."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator

import click
import pytest

from quantship.cli import main

NAMED_DEFAULT = re.compile(r"Default: (quantship(?:\.\w+)+)\.([A-Z][A-Z0-9_]*) \(([^)]*)\)")
UNITS = {"": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def options(group: click.Group) -> Iterator[tuple[str, click.Option]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from ((f"{name} {inner}", option) for inner, option in options(command))
            continue
        for parameter in command.params:
            if isinstance(parameter, click.Option) and parameter.help:
                yield name, parameter


NAMED = [
    pytest.param(option.help, id=f"{command} {option.opts[-1]}")
    for command, option in options(main)
    if option.help and NAMED_DEFAULT.search(option.help)
]


def test_the_cli_names_some_defaults_by_constant_and_value() -> None:
    assert len(NAMED) >= 4, [help for (help,) in (param.values for param in NAMED)]


@pytest.mark.parametrize("help", NAMED)
def test_a_default_shown_in_help_is_the_value_its_constant_holds(help: str) -> None:
    for module, constant, shown in NAMED_DEFAULT.findall(help):
        number, _, unit = shown.partition(" ")
        held = getattr(importlib.import_module(module), constant)
        assert float(number) * UNITS[unit] == held, f"{module}.{constant} is {held}; the help says {shown}"
