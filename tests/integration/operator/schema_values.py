"""Hypothesis strategies for values of a CRD's openAPIV3Schema: what a user may write, drawn from
the schema itself. hypothesis-jsonschema would be the library for it, but 0.23 does not run on
this hypothesis (`'many' object has no attribute 'more'`), and it knows no OpenAPI (`nullable`,
draft 4's boolean bounds, `x-kubernetes-*`).

Values follow the node's type, bounds, enum and pattern, so most of them pass the schema; CEL
rules are left to `apiserver_rules.admit`, which a test uses to keep only what a real API server
would admit. A free-form field (`x-kubernetes-preserve-unknown-fields`) gets any JSON.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)


def values(node: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Values for one schema node."""
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return JSON
    if node.get("x-kubernetes-int-or-string"):
        return st.integers() | _string({**node, "type": "string"})
    kind = node.get("type")
    if kind == "object":
        return _object(node)
    if kind == "array":
        return st.lists(
            values(node["items"]), min_size=node.get("minItems", 0), max_size=node.get("maxItems", 4)
        )
    if kind == "integer":
        return st.integers(node.get("minimum"), node.get("maximum"))
    if kind == "number":
        return st.floats(
            node.get("minimum"),
            node.get("maximum"),
            exclude_min=node.get("exclusiveMinimum") is True,
            exclude_max=node.get("exclusiveMaximum") is True,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        return _string(node)
    raise ValueError(f"no strategy for schema node {dict(node)!r}")


def _object(node: Mapping[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties = node.get("properties") or {}
    if not properties:
        additional = node.get("additionalProperties")
        items = values(additional) if isinstance(additional, Mapping) else JSON
        keys = st.from_regex(r"[a-z_]{1,8}", fullmatch=True) | st.text(max_size=12)
        return st.dictionaries(keys, items, max_size=3)
    required = set(node.get("required") or ())
    return st.fixed_dictionaries(
        {name: values(sub) for name, sub in properties.items() if name in required},
        optional={name: values(sub) for name, sub in properties.items() if name not in required},
    )


MATCHES_RULE = re.compile(r"self\.matches\(r'(.*)'\)")
"""A CEL rule that is a pattern (crd_uris.matches_rule): values are drawn from the pattern, as for
`pattern`."""


def _pattern(node: Mapping[str, Any]) -> str | None:
    if "pattern" in node:
        return str(node["pattern"])
    for rule in node.get("x-kubernetes-validations") or []:
        found = MATCHES_RULE.fullmatch(rule["rule"])
        if found:
            return found.group(1)
    return None


def _string(node: Mapping[str, Any]) -> st.SearchStrategy[str]:
    low, high = node.get("minLength", 0), node.get("maxLength")
    pattern = _pattern(node)
    if pattern is None:
        return st.text(min_size=low, max_size=high if high is not None else 40)
    # An unanchored end lets the pattern's match be followed by anything: those are drawn too. An
    # anchored one is Go's $ (the end of the text), not Python's (which admits a final newline).
    pattern = pattern.removesuffix("$") + "\\Z" if pattern.endswith("$") else pattern
    drawn = st.from_regex(pattern)
    return drawn.filter(lambda text: low <= len(text) and (high is None or len(text) <= high))
