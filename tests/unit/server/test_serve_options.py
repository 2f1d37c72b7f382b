"""`quantship serve` takes its defaults from the server settings dataclasses, where each is written once."""

from __future__ import annotations

import dataclasses

from quantship import cli
from quantship.server import BatchSettings, QualitySettings, ServerSettings


def test_every_serve_option_named_after_a_setting_defaults_to_that_setting() -> None:
    defaults = {
        field.name: field.default
        for owner in (ServerSettings, BatchSettings, QualitySettings)
        for field in dataclasses.fields(owner)
        if field.default is not dataclasses.MISSING
    }
    options = {param.name: param.default for param in cli.serve.params if param.name in defaults}
    assert len(options) >= 14  # host, port, grpc_port, batching, sampling, feedback, body, drain ...
    for name, default in options.items():
        expected = defaults[name]
        assert default == getattr(expected, "value", expected), name
