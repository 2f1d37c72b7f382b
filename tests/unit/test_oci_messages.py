"""What quantship.oci writes of a registry's words, and how it names Docker Hub: no registry
needed."""

from __future__ import annotations

import logging

import oras.logger
import pytest

HOSTILE = "\x1b]0;owned title\x07\x1b[2J\x1b[31mFAKE: push ok\x1b[0m\n\u202eforged" + "x" * 5000


def test_what_oras_logs_of_a_registrys_answer_is_one_printable_short_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import quantship.oci  # noqa: F401  (it filters oras's logger)

    with caplog.at_level(logging.ERROR):
        oras.logger.logger.error(HOSTILE)  # as oras's _parse_response_errors logs an error body
    [record] = [r for r in caplog.records if r.name == oras.logger.logger.logger.name]
    said = record.getMessage()
    assert "\x1b" not in said and "\x07" not in said and "\n" not in said and "\u202e" not in said
    assert len(said) <= 201
