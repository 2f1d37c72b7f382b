"""The URIs the QuantizedModel's fields take (`UriForm`): each field's regex and the same in words.

One `UriForm.of` call per kind of field gives the pattern that the CRD's CEL rule (`uri_schema`),
the operator (quantization, quantize_job) and the chart's values schema check, and the
message the API server answers with when a URI does not match it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from quantship import oci
from quantship.operator import names

_NOT_IN_PATH = r"/?#%\s\x00-\x1f\x7f"
"""What a pvc:// path segment holds none of: the separator, what urlparse would cut the path at
(? #), percent-encoding (fetch would decode it), ASCII space and control characters."""
_PATH_CHAR = f"[^{_NOT_IN_PATH}]"
_NOT_DOT = f"[^.{_NOT_IN_PATH}]"
_NAMED = f"({_NOT_DOT}{_PATH_CHAR}*|\\.{_NOT_DOT}{_PATH_CHAR}*|\\.\\.{_PATH_CHAR}+)"
"""A path segment that names something: not empty, not `.` or `..` (RE2 has no lookahead)."""
_SEGMENT = f"({_NAMED}|\\.)?"
"""Any path segment but `..`."""
_IN_CLAIM = f"/({_SEGMENT}/)*{_NAMED}(/{_SEGMENT})*"
"""A path inside a claim: it names something below the claim, and never goes up out of it."""


def _pattern(*schemes: str, in_claim: bool, push: bool) -> str:
    """URIs of these schemes; a pvc:// one names a claim that can exist and stays inside it
    (pvc://CLAIM[/PATH], no `..`), and with `in_claim` names a path in it (pvc://CLAIM/PATH, as a
    quantize Job mounts it); an oci:// one is a reference to pull (a tag, a digest or both) or,
    with `push`, to push to (a tag)."""
    others = "|".join(scheme for scheme in schemes if scheme not in ("pvc", "oci"))
    path = _IN_CLAIM if in_claim else f"(/{_SEGMENT})*"
    alternatives = [f"({others})://.+"] if others else []
    if "oci" in schemes:  # an ambiguous reference sent a registry's credentials elsewhere (oci_reference.py)
        reference = oci.PUSH_REFERENCE_PATTERN if push else oci.PULL_REFERENCE_PATTERN
        alternatives.append(f"oci://{reference}")
    if "pvc" in schemes:
        alternatives.append(f"pvc://{names.SUBDOMAIN}{path}")
    return f"^({'|'.join(alternatives)})$"


_FORMS = {
    "file": "file:///PATH",
    "pvc": "pvc://CLAIM[/PATH]",
    "http": "http(s)://HOST/PATH",
    "oci": "oci://REGISTRY[:PORT]/REPOSITORY[:TAG][@sha256:DIGEST] (a tag, a digest or both)",
}
"""Each scheme's form, in the order a message names them."""
_NOTES = {
    "pvc": "a pvc:// CLAIM is a claim's name, its PATH has no '..' segment, '?', '#', '%', space or control "
    "character",
    "oci": "REPOSITORY in lower-case letters, digits, '.', '_', '-', split by '/'",
}


def _message(*schemes: str, in_claim: bool, push: bool) -> str:
    """What _pattern(*schemes, ...) admits, in words: the API server's whole answer to a URI that
    does not match (as a CEL rule's message; a `pattern` would print its regex)."""
    forms = {**_FORMS}
    if in_claim:
        forms["pvc"] = "pvc://CLAIM/PATH"
    if push:
        forms["oci"] = "oci://REGISTRY[:PORT]/REPOSITORY:TAG (a tag, no digest: the Job pushes to it)"
    named = [form for scheme, form in forms.items() if scheme in schemes]
    notes = [note for scheme, note in _NOTES.items() if scheme in schemes]
    return f"must be {', '.join(named[:-1])} or {named[-1]}; {'; '.join(notes)}"


@dataclasses.dataclass(frozen=True)
class UriForm:
    """The URIs a field takes: the pattern the CRD's rule, the operator and the quantize Job check,
    and the same in words (the rule's message, the chart's refusal). Both come from one `of` call,
    so they cannot name different schemes."""

    pattern: str
    message: str

    @classmethod
    def of(cls, *schemes: str, in_claim: bool = False, push: bool = False) -> UriForm:
        """URIs of these schemes; `in_claim`: a pvc:// one names a path in its claim; `push`: an
        oci:// one is a tag to push to, not a reference to pull."""
        return cls(
            pattern=_pattern(*schemes, in_claim=in_claim, push=push),
            message=_message(*schemes, in_claim=in_claim, push=push),
        )


ARTIFACT_SCHEMES = ("file", "pvc", "http", "https", "oci")
"""What `quantship fetch` takes (fetch.source_path), so what spec.artifact.uri may be."""
ARTIFACT_URI = UriForm.of(*ARTIFACT_SCHEMES)
MAX_URI_CHARS = 1024
"""The longest URI a spec field takes. The longest OCI reference a registry serves is about 700
(host 253, repository 255, tag 128, digest 71); object stores' URLs are shorter (a presigned one,
which expires, is no artifact's address). Five at crd_quantize.JSON_BYTES_PER_CHAR (92 KB) keep
within what crd_quantize.OPTION_NAMES_BUDGET_BYTES leaves the rest of the object. It also bounds
the CEL cost of the fields' `matches()`, which the API server estimates before it takes the CRD:
(4 x maxLength + 1) / 10 x the pattern's length / 4 (k8s.io/apiserver's cel/common/schemas.go
counts 4 bytes a character; cel-go's checker/cost.go), 71,750 for the CRD's longest, against 10,000,000 a
rule. Unbounded (a string as long as a 3 MiB request), 39 to 55 million: the CRD is refused.
apiserver_rules.matches_costs estimates them in the tests."""


def matches_rule(pattern: str) -> str:
    """The CEL rule `self` matches `pattern` (RE2 in CEL as in Go), in a raw string: escapes such
    as \\. or \\s reach the regex as written (a quoted CEL string refuses them). A raw string ends
    at the first quote and holds no line break (cel-go's lexer, CEL.g4)."""
    if any(character in pattern for character in "'\r\n"):
        raise ValueError(f"a CEL raw string cannot hold {pattern!r}: a quote or a line break")
    return f"self.matches(r'{pattern}')"


def uri_schema(description: str, form: UriForm) -> dict[str, Any]:
    """A URI field: `form`'s pattern in a CEL rule whose message says it in words."""
    return {
        "type": "string",
        "maxLength": MAX_URI_CHARS,
        "x-kubernetes-validations": [{"rule": matches_rule(form.pattern), "message": form.message}],
        "description": description,
    }


INPUT_SCHEMES = ("file", "pvc", "http", "https")
"""What a quantize Job reads its model and data from (no oci://: an artifact registry holds artifacts)."""
INPUT_URI = UriForm.of(*INPUT_SCHEMES, in_claim=True)
TARGET_SCHEMES = ("pvc", "oci")
TARGET_URI = UriForm.of(*TARGET_SCHEMES, in_claim=True, push=True)
"""A target a Job can publish to: a path in a claim, or an oci:// tag (no digest: the Job pushes)."""
