"""The CRD's x-kubernetes-validations rules under cel-python, a real CEL implementation (RE2 in
`matches()`, as cel-go's): one helper for every test folder (on the path through pytest's
`pythonpath` in pyproject.toml). Used by apiserver_rules (the API server's CEL step), the chart's
tests (the example model against the rendered CRD) and the OCI reference tests."""

from __future__ import annotations

import functools
from typing import Any

import celpy


@functools.cache
def compile_rule(rule: str) -> Any:
    """The rule compiled by cel-python, once per rule; a rule that does not compile raises."""
    environment = celpy.Environment()
    return environment.program(environment.compile(rule))


def evaluate(rule: str, value: Any) -> bool | str:
    """True, False, or the evaluation error's text (a missing key, a type mismatch), with `value`
    (plain JSON) as `self`."""
    try:
        result = compile_rule(rule).evaluate({"self": celpy.json_to_cel(value)})
    except celpy.CELEvalError as exc:
        return str(exc)
    if isinstance(result, celpy.CELEvalError):
        return str(result)
    return bool(result)
