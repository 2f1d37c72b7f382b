"""What a real kube-apiserver checks about a CRD and its objects that kmock and jsonschema do not,
implemented here for the tests (never product code).

The rules come from apiextensions.k8s.io/v1, "Specifying a structural schema" in the Kubernetes
documentation, and k8s.io/apiextensions-apiserver's validation
(ValidateCustomResourceDefinitionOpenAPISchema, the structural schema and default validation).
Each rule has an id the tests and the issue note name:

  S1  every node has a `type` (or x-kubernetes-int-or-string / x-kubernetes-preserve-unknown-fields)
  S2  `properties` and `additionalProperties` never together (closed objects rely on pruning)
  S3  no `$ref`, `definitions`, `dependencies`, `patternProperties`, `additionalItems`,
      `uniqueItems: true`, tuple `items`
  S4  inside anyOf/allOf/oneOf/not only value validations: no `type`, `default`, `description`,
      `nullable`, `additionalProperties`, `x-kubernetes-*`; properties named there exist outside
  S5  x-kubernetes-preserve-unknown-fields is true or absent
  S6  an array has `items`; x-kubernetes-list-type map: object items, scalar keys that are
      required or defaulted
  S7  top-level metadata constrains only name and generateName, and carries no default
  S8  every enum value is valid against its node
  S9  every default survives pruning unchanged and is valid against its node
  S10 x-kubernetes-validations: a rule, a one-line message (a multi-line rule needs one)
  S11 the root is an object without additionalProperties

(S4 allows x-kubernetes-int-or-string its own `anyOf: [{type: integer}, {type: string}]`.)

Objects: `prune` drops unknown fields as the API server does on write, `apply_defaults` fills
defaults as it does on read and write, `validate` is jsonschema (draft 4, OpenAPI's boolean
exclusive bounds) plus `nullable`, with `pattern` matched by RE2 as Go's regexp matches it, and
`cel_errors` evaluates every x-kubernetes-validations rule with cel-python, a real CEL
implementation (tests/helpers/cel_rules.py). `admit` also checks the name as for any custom
resource (a DNS-1123 subdomain), and on an update ratchets what the update left unchanged
(KEP-4008).

Built-in objects the operator creates: `object_errors` applies apimachinery's name and label
rules and core/v1's checks of what a pod spec takes from a QuantizedModel (volume and secret
names, mount paths, images, resource quantities).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import cel_rules
import jsonschema
import re2
import yaml
from kubernetes.utils import parse_quantity

REPOSITORY = Path(__file__).resolve().parents[3]
GATEWAY_API = REPOSITORY.parent / "shared" / "gateway-api"
"""The Gateway API v1.0.0 CRDs, read where they lie (../shared/gateway-api/), never copied in."""

JUNCTORS = ("anyOf", "allOf", "oneOf")
NOT_IN_JUNCTORS = {"type", "default", "description", "nullable", "additionalProperties", "title"}
FORBIDDEN = ("$ref", "definitions", "dependencies", "patternProperties", "additionalItems")
META_FIELDS = {"name", "generateName"}


def crd_schema(definition: Mapping[str, Any], version: str | None = None) -> dict[str, Any]:
    versions = definition["spec"]["versions"]
    chosen = next(v for v in versions if version is None or v["name"] == version)
    return dict(chosen["schema"]["openAPIV3Schema"])


def load_gateway_api() -> dict[str, dict[str, Any]]:
    """CRD name -> CRD, from ../shared/gateway-api/."""
    found = {}
    for path in sorted(GATEWAY_API.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "CustomResourceDefinition":
                found[document["metadata"]["name"]] = document
    return found


# -- the structural rules -----------------------------------------------------------------------


def structural_errors(root: Mapping[str, Any]) -> list[str]:
    """Every violation of S1-S11 in an openAPIV3Schema, as `rule path: what`."""
    errors: list[str] = []
    if root.get("type") != "object":
        errors.append("S11 <root>: the root must be of type object")
    if "additionalProperties" in root:
        errors.append("S11 <root>: no additionalProperties at the root")
    metadata = (root.get("properties") or {}).get("metadata")
    if metadata is not None:
        errors += _metadata_errors(metadata)
    for name, node in (root.get("properties") or {}).items():
        if name != "metadata":
            _walk(node, name, errors)
    _common(root, "<root>", errors)
    return errors


def _metadata_errors(node: Mapping[str, Any]) -> list[str]:
    errors = []
    if node.get("type") != "object":
        errors.append("S7 metadata: must be of type object")
    for name, sub in (node.get("properties") or {}).items():
        if name not in META_FIELDS:
            errors.append(f"S7 metadata.{name}: only name and generateName may be constrained")
        elif sub.get("type") != "string":
            errors.append(f"S7 metadata.{name}: must be of type string")
    for key in ("default", "additionalProperties", "x-kubernetes-validations"):
        if key in node:
            errors.append(f"S7 metadata: {key} is not allowed on top-level metadata")
    for name, sub in (node.get("properties") or {}).items():
        if "default" in sub:
            errors.append(f"S7 metadata.{name}: no defaults in top-level metadata")
    return errors


def _children(node: Mapping[str, Any], path: str) -> Iterator[tuple[Mapping[str, Any], str]]:
    for name, sub in (node.get("properties") or {}).items():
        yield sub, f"{path}.{name}"
    if isinstance(node.get("additionalProperties"), Mapping):
        yield node["additionalProperties"], f"{path}.*"
    if isinstance(node.get("items"), Mapping):
        yield node["items"], f"{path}[]"


def _walk(node: Mapping[str, Any], path: str, errors: list[str]) -> None:
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if not node.get("type") and not preserve and not node.get("x-kubernetes-int-or-string"):
        errors.append(f"S1 {path}: no type")
    _common(node, path, errors)
    for sub, sub_path in _children(node, path):
        _walk(sub, sub_path, errors)


def _common(node: Mapping[str, Any], path: str, errors: list[str]) -> None:
    """Rules for every node, the root included."""
    if "properties" in node and "additionalProperties" in node:
        errors.append(f"S2 {path}: properties and additionalProperties are mutually exclusive")
    for key in FORBIDDEN:
        if key in node:
            errors.append(f"S3 {path}: {key} is forbidden")
    if node.get("uniqueItems") is True:
        errors.append(f"S3 {path}: uniqueItems cannot be true")
    if isinstance(node.get("items"), list):
        errors.append(f"S3 {path}: items must be a single schema")
    if (
        "x-kubernetes-preserve-unknown-fields" in node
        and node["x-kubernetes-preserve-unknown-fields"] is not True
    ):
        errors.append(f"S5 {path}: x-kubernetes-preserve-unknown-fields must be true or absent")
    if node.get("type") == "array" and not isinstance(node.get("items"), Mapping):
        errors.append(f"S6 {path}: an array needs items")
    if node.get("x-kubernetes-list-type") == "map":
        errors += _list_map_errors(node, path)
    for junctor in JUNCTORS:
        for index, sub in enumerate(node.get(junctor) or []):
            if not _int_or_string_pattern(node, junctor, index):
                _value_validation(sub, node, f"{path}.{junctor}[{index}]", errors)
    if "not" in node:
        _value_validation(node["not"], node, f"{path}.not", errors)
    for index, value in enumerate(node.get("enum") or []):
        problem = first_error(_enum_schema(node), value)
        if problem:
            errors.append(f"S8 {path}.enum[{index}]: {problem}")
    if "default" in node:
        default = node["default"]
        if prune(default, node) != default:
            errors.append(f"S9 {path}.default: has fields the schema prunes")
        problem = first_error(node, default)
        if problem:
            errors.append(f"S9 {path}.default: {problem}")
    for index, rule in enumerate(node.get("x-kubernetes-validations") or []):
        text, message = str(rule.get("rule", "")).strip(), rule.get("message")
        where = f"S10 {path}.x-kubernetes-validations[{index}]"
        if not text:
            errors.append(f"{where}: no rule")
        if message is not None and (not str(message).strip() or "\n" in str(message).strip()):
            errors.append(f"{where}: the message must be one non-empty line")
        if "\n" in text and not message:
            errors.append(f"{where}: a multi-line rule needs a message")


INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def _int_or_string_pattern(node: Mapping[str, Any], junctor: str, index: int) -> bool:
    """S4's exception (XIntOrString in apiextensions' types_jsonschema.go): with
    x-kubernetes-int-or-string, `anyOf: [{type: integer}, {type: string}]` may name types, as may
    that anyOf as the first item of an allOf."""
    if node.get("x-kubernetes-int-or-string") is not True:
        return False
    if junctor == "anyOf":
        return node["anyOf"] == INT_OR_STRING
    return junctor == "allOf" and index == 0 and node["allOf"][0] == {"anyOf": INT_OR_STRING}


def _enum_schema(node: Mapping[str, Any]) -> dict[str, Any]:
    return {key: node[key] for key in ("type", "nullable") if key in node}


def _list_map_errors(node: Mapping[str, Any], path: str) -> list[str]:
    errors = []
    keys, items = node.get("x-kubernetes-list-map-keys") or [], node.get("items") or {}
    if not keys:
        errors.append(f"S6 {path}: x-kubernetes-list-type map needs x-kubernetes-list-map-keys")
    if items.get("type") != "object":
        errors.append(f"S6 {path}[]: items of a map list must be objects")
    for key in keys:
        prop = (items.get("properties") or {}).get(key)
        if prop is None:
            errors.append(f"S6 {path}: map key {key} is not a property of the items")
        elif prop.get("type") in ("object", "array"):
            errors.append(f"S6 {path}[].{key}: a map key must be a scalar")
        elif key not in (items.get("required") or []) and "default" not in prop:
            errors.append(f"S6 {path}[].{key}: a map key must be required or defaulted")
    return errors


def _value_validation(
    node: Mapping[str, Any], outer: Mapping[str, Any] | None, path: str, errors: list[str]
) -> None:
    """S4: a node inside anyOf/allOf/oneOf/not, and everything below it."""
    for key in node:
        if key in NOT_IN_JUNCTORS or key.startswith("x-kubernetes-"):
            errors.append(f"S4 {path}: {key} is not allowed inside anyOf/allOf/oneOf/not")
        if key in FORBIDDEN:
            errors.append(f"S3 {path}: {key} is forbidden")
    outer_properties = (outer or {}).get("properties") or {}
    for name, sub in (node.get("properties") or {}).items():
        if outer is not None and name not in outer_properties:
            errors.append(f"S4 {path}.{name}: not specified outside the value validation")
        _value_validation(sub, outer_properties.get(name), f"{path}.{name}", errors)
    if isinstance(node.get("items"), Mapping):
        _value_validation(node["items"], (outer or {}).get("items"), f"{path}[]", errors)
    for junctor in JUNCTORS:
        for index, sub in enumerate(node.get(junctor) or []):
            _value_validation(sub, outer, f"{path}.{junctor}[{index}]", errors)
    if "not" in node:
        _value_validation(node["not"], outer, f"{path}.not", errors)


# -- objects: prune, default, validate ----------------------------------------------------------


def prune(value: Any, node: Mapping[str, Any]) -> Any:
    """`value` as the API server stores it: fields the schema does not know are dropped, and so is
    a null where the schema does not say `nullable` (then defaulted, as if never sent)."""
    if isinstance(value, dict):
        preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
        properties = node.get("properties") or {}
        additional = node.get("additionalProperties")
        result = {}
        for key, item in value.items():
            if key in properties and item is None and not properties[key].get("nullable"):
                continue
            if key in properties:
                result[key] = prune(item, properties[key])
            elif isinstance(additional, Mapping):
                result[key] = prune(item, additional)
            elif preserve or additional is True:
                result[key] = copy.deepcopy(item)
        return result
    if isinstance(value, list) and isinstance(node.get("items"), Mapping):
        return [prune(item, node["items"]) for item in value]
    return copy.deepcopy(value)


def pruned_fields(written: Any, stored: Any, path: str = "") -> list[str]:
    """The paths of `written` that are not in `stored` (what pruning dropped)."""
    if not (isinstance(written, dict) and isinstance(stored, dict)):
        return []
    dropped = []
    for key, item in written.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in stored:
            dropped.append(where)
        else:
            dropped += pruned_fields(item, stored[key], where)
    return dropped


def prune_resource(resource: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
    """A whole object pruned: ObjectMeta follows its own (built-in) schema, the rest the CRD's."""
    pruned = prune({k: v for k, v in resource.items() if k != "metadata"}, root)
    if "metadata" in resource:
        pruned["metadata"] = copy.deepcopy(resource["metadata"])
    return dict(pruned)


def apply_defaults(value: Any, node: Mapping[str, Any]) -> Any:
    """`value` with defaults filled in as the API server does: a defaulted object gets its own
    properties' defaults in turn."""
    if isinstance(value, dict):
        result = dict(value)
        for key, sub in (node.get("properties") or {}).items():
            if key not in result and "default" in sub:
                result[key] = copy.deepcopy(sub["default"])
            if key in result:
                result[key] = apply_defaults(result[key], sub)
        if isinstance(node.get("additionalProperties"), Mapping):
            for key in result:
                result[key] = apply_defaults(result[key], node["additionalProperties"])
        return result
    if isinstance(value, list) and isinstance(node.get("items"), Mapping):
        return [apply_defaults(item, node["items"]) for item in value]
    return value


def _nullable_type(validator: Any, types: Any, instance: Any, schema: Mapping[str, Any]) -> Any:
    if instance is None and schema.get("nullable"):
        return
    yield from jsonschema.Draft4Validator.VALIDATORS["type"](validator, types, instance, schema)


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]) -> Any:
    """The API server matches `pattern` with Go's regexp (RE2): its `$` is the end of the text, where
    Python's also matches before a final newline ("name\n" would pass). RE2 itself, as cel-python's
    matches() uses it."""
    if isinstance(instance, str) and not re2.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


OpenAPIValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {"type": _nullable_type, "pattern": _re2_pattern}
)


def first_error(node: Mapping[str, Any], value: Any) -> str | None:
    error = jsonschema.exceptions.best_match(OpenAPIValidator(node).iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path)
    return f"{where or '<value>'}: {error.message}"


# -- CEL ----------------------------------------------------------------------------------------


def rules_at(
    node: Mapping[str, Any], value: Any, path: str = "self"
) -> Iterator[tuple[str, Mapping[str, Any], Any]]:
    """(path, rule, value of self) for every x-kubernetes-validations rule that applies to `value`."""
    for where, rule, self_value, _ in _rules_with_old(node, value, ABSENT, path):
        yield where, rule, self_value


ABSENT = object()
"""No such value in the old object."""


def _rules_with_old(
    node: Mapping[str, Any], value: Any, old: Any, path: str
) -> Iterator[tuple[str, Mapping[str, Any], Any, Any]]:
    """rules_at, with the value at the same place in the old object (or ABSENT)."""
    for rule in node.get("x-kubernetes-validations") or []:
        yield path, rule, value, old
    if isinstance(value, dict):
        properties = node.get("properties") or {}
        for key, item in value.items():
            was = old.get(key, ABSENT) if isinstance(old, dict) else ABSENT
            if key in properties:
                yield from _rules_with_old(properties[key], item, was, f"{path}.{key}")
            elif isinstance(node.get("additionalProperties"), Mapping):
                yield from _rules_with_old(node["additionalProperties"], item, was, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
        same = value == old  # items are matched to the old ones only in an unchanged list
        for index, item in enumerate(value):
            yield from _rules_with_old(node["items"], item, item if same else ABSENT, f"{path}[{index}]")


def cel_errors(node: Mapping[str, Any], value: Any, old: Any = ABSENT) -> list[str]:
    """Every rule that does not hold on `value` (transition rules, which read oldSelf, apply to
    updates only and are left out, as on create). With the `old` object of an update, a rule on a
    value the update left unchanged is not evaluated (ratcheting)."""
    failed = []
    for path, rule, self_value, was in _rules_with_old(node, value, old, "self"):
        if "oldSelf" in rule["rule"] or (was is not ABSENT and was == self_value):
            continue
        outcome = cel_rules.evaluate(rule["rule"], self_value)
        if outcome is False:  # what the API server answers: the message, else the rule
            failed.append(f"{path}: {rule.get('message') or 'failed rule: ' + rule['rule']}")
        elif outcome is not True:
            failed.append(f"{path}: {rule['rule']!r} could not be evaluated: {outcome}")
    return failed


def admit(
    node: Mapping[str, Any], resource: Mapping[str, Any], old: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """What a create (or, given the stored `old` object, an update) does with `resource`: check its
    name as for any custom resource, prune, default, then validate (schema and CEL). Returns the
    stored object and the errors (empty when admitted).

    An update ratchets (KEP-4008: on by default since Kubernetes 1.30, GA in 1.33): an error of a
    value check (pattern, enum, bounds, a CEL rule without oldSelf) in a value the update left as
    it was does not refuse it, so a resource stored before a rule existed can still be written,
    its status included. Before 1.30 every such write is refused. Kept stricter than the API
    server where unsure: `type` and `required` errors always refuse, and a list's items count as
    unchanged only when the whole list is."""
    stored = apply_defaults(prune_resource(resource, node), node)
    problems = dns_1123_subdomain_errors(str((resource.get("metadata") or {}).get("name", "")))
    for error in OpenAPIValidator(node).iter_errors(stored):
        ratchets = old is not None and error.validator in RATCHETED
        if not (ratchets and _unchanged(stored, old, tuple(error.absolute_path))):
            problems.append(error.message)
    return stored, problems + cel_errors(node, stored, ABSENT if old is None else old)


RATCHETED = frozenset(
    {
        "pattern", "enum", "format", "maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum",
        "maxLength", "minLength", "maxItems", "minItems", "maxProperties", "minProperties", "multipleOf",
    }
)  # fmt: skip
"""The schema checks whose errors an update ratchets here."""


def _unchanged(new: Any, old: Any, path: tuple[Any, ...]) -> bool:
    """The value at `path` is the same in both objects: fields matched by name, list items only
    when the whole list is the same."""
    for part in path:
        if isinstance(new, list) and new != old:
            return False
        if (
            isinstance(new, dict | list)
            and isinstance(old, type(new))
            and _has(new, part)
            and _has(old, part)
        ):
            new, old = new[part], old[part]
        else:
            return False
    return bool(new == old)


def _has(value: dict[str, Any] | list[Any], part: Any) -> bool:
    return part in value if isinstance(value, dict) else isinstance(part, int) and part < len(value)


# -- the estimated cost of matches() --------------------------------------------------------------
# The API server estimates each rule's cost before it takes a CRD (cel-go's checker/cost.go over the
# sizes k8s.io/apiserver's cel/common/schemas.go gives the schema's strings) and refuses a rule past
# StaticEstimatedCostLimit, or rules past StaticEstimatedCRDCostLimit in all (apiextensions'
# validation.go). matches() is the costly call: string length x regex length.

STATIC_ESTIMATED_COST_LIMIT = 10_000_000
STATIC_ESTIMATED_CRD_COST_LIMIT = 100_000_000
MAX_REQUEST_BYTES = 3 * 1024 * 1024
MATCHES_CALL = re.compile(r"self\.matches\(r?'([^']*)'\)")


def string_size_estimate(node: Mapping[str, Any]) -> int:
    """The most bytes the estimate takes a string to hold: maxLength x 4 (a character is up to 4
    bytes), the longest of an enum, else a whole request less its quotes."""
    if "maxLength" in node:
        return int(node["maxLength"]) * 4
    if node.get("enum"):
        return max(len(str(value)) for value in node["enum"])
    return MAX_REQUEST_BYTES - 2


def matches_costs(node: Mapping[str, Any], path: str = "") -> dict[str, int]:
    """Path -> the estimated cost of the `self.matches('REGEX')` calls of the rules on a string:
    ceil((size + 1) x 0.1) x ceil(len(REGEX) x 0.25) a call (cel-go's StringTraversalCostFactor and
    RegexStringLengthCostFactor), without the few units of the select and the call. A rule under a
    list or a map counts once per item there, which this does not estimate: it refuses to."""
    costs = {}
    regexes = [
        regex
        for rule in node.get("x-kubernetes-validations") or []
        for regex in MATCHES_CALL.findall(rule["rule"])
    ]
    if regexes:
        size = string_size_estimate(node)
        costs[path] = sum(math.ceil((size + 1) * 0.1) * math.ceil(len(regex) * 0.25) for regex in regexes)
    for name, sub in (node.get("properties") or {}).items():
        costs.update(matches_costs(sub, f"{path}.{name}" if path else name))
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), Mapping) and matches_costs(node[key], f"{path}[]"):
            raise NotImplementedError(f"{path}: matches() in a rule under {key}")
    return costs


# -- names and labels of built-in objects ---------------------------------------------------------
# k8s.io/apimachinery/pkg/util/validation (IsDNS1123Subdomain, IsDNS1035Label, IsQualifiedName,
# IsValidLabelValue), as ValidateObjectMeta and the kinds' own validation apply them: a custom
# resource's or a Deployment's or Job's name is a DNS-1123 subdomain, a Service's a DNS-1035 label.

_DNS_1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_1123_SUBDOMAIN = re.compile(rf"{_DNS_1123_LABEL}(\.{_DNS_1123_LABEL})*")
_DNS_1035_LABEL = re.compile("[a-z]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_NAME = re.compile("([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile("(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
NAME_RULES = {"Service": "dns-1035-label"}
"""The kinds whose name is not a DNS-1123 subdomain."""


def dns_1123_subdomain_errors(name: str) -> list[str]:
    if len(name) > 253 or not _DNS_1123_SUBDOMAIN.fullmatch(name):
        return [f"name {name!r}: a DNS-1123 subdomain (lowercase alphanumerics, '-', '.'; <= 253)"]
    return []


def dns_1035_label_errors(name: str) -> list[str]:
    if len(name) > 63 or not _DNS_1035_LABEL.fullmatch(name):
        return [f"name {name!r}: a DNS-1035 label (a letter, then lowercase alphanumerics or '-'; <= 63)"]
    return []


def label_errors(labels: Mapping[str, str], where: str) -> list[str]:
    errors = []
    for key, value in labels.items():
        prefix, slash, name = key.rpartition("/")
        if slash and dns_1123_subdomain_errors(prefix):
            errors.append(f"{where}: label key {key!r}: its prefix is not a DNS-1123 subdomain")
        if len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
            errors.append(f"{where}: label key {key!r} is not a qualified name")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            errors.append(f"{where}: label {key}={value!r}: not a label value (<= 63, alphanumerics, '-_.')")
    return errors


def object_errors(body: Mapping[str, Any]) -> list[str]:
    """What the API server refuses in a built-in object's name and labels (its pod template's and
    selectors' labels too)."""
    metadata = body.get("metadata") or {}
    name = str(metadata.get("name", ""))
    rule = NAME_RULES.get(body.get("kind", ""), "dns-1123-subdomain")
    errors = dns_1035_label_errors(name) if rule == "dns-1035-label" else dns_1123_subdomain_errors(name)
    errors += label_errors(metadata.get("labels") or {}, "metadata.labels")
    spec = body.get("spec") or {}
    selector = spec.get("selector") or {}
    if body.get("kind") != "Service":  # a Service's selector is the labels themselves
        selector = selector.get("matchLabels") or {}
    errors += label_errors(selector, "spec.selector")
    template = spec.get("template") or {}
    errors += label_errors(
        (template.get("metadata") or {}).get("labels") or {}, "spec.template.metadata.labels"
    )
    errors += pod_spec_errors(template.get("spec") or {})
    if body.get("kind") == "Service":
        errors += service_port_errors(spec.get("ports") or [])
    return [f"{body.get('kind')} {name}: {error}" for error in errors]


def service_port_errors(ports: list[Mapping[str, Any]]) -> list[str]:
    """ValidateService's: port names unique, and no two ports of one protocol and number."""
    errors, names, pairs = [], set(), set()
    for index, port in enumerate(ports):
        pair = (port.get("protocol", "TCP"), port.get("port"))
        if pair in pairs:
            errors.append(f"spec.ports[{index}]: Duplicate value: {pair}")
        if port.get("name") in names:
            errors.append(f"spec.ports[{index}].name: Duplicate value: {port.get('name')!r}")
        pairs.add(pair)
        names.add(port.get("name"))
    return errors


# The pod spec, as core/v1 validation (ValidatePodSpec) checks what the operator fills from a spec:
# volume names are DNS-1123 labels, a mount names a volume of the pod, its path is unique in the
# container and has no '..' segment, subPath and subPathExpr not both, an image has no surrounding
# whitespace, secret names are DNS-1123 subdomains, and resources (ValidateResourceRequirements)
# name container resources with quantities (resource.ParseQuantity: the official client's
# parse_quantity here) that are not negative, no request above its limit.
STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")


def pod_spec_errors(pod: Mapping[str, Any]) -> list[str]:
    errors = []
    for volume in pod.get("volumes") or []:
        if len(volume["name"]) > 63 or not re.fullmatch(_DNS_1123_LABEL, volume["name"]):
            errors.append(f"volume name {volume['name']!r} is not a DNS-1123 label")
        secret = (volume.get("secret") or {}).get("secretName")
        if secret is not None:
            errors += [f"volume {volume['name']}: secret {e}" for e in dns_1123_subdomain_errors(secret)]
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is not None and not claim:
            errors.append(f"volume {volume['name']}: claimName is required")
    for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
        where = f"container {container['name']}"
        image = container.get("image", "")
        if not image or image != image.strip():
            errors.append(f"{where}: image {image!r} is empty or has surrounding whitespace")
        errors += [f"{where}: {error}" for error in volume_mount_errors(container, pod)]
        errors += [f"{where}: {error}" for error in resource_errors(container.get("resources") or {})]
    return errors


def volume_mount_errors(container: Mapping[str, Any], pod: Mapping[str, Any]) -> list[str]:
    """A container's mounts, as ValidateVolumeMounts checks them: a path seen before is reported
    at the later mount only; subPath and subPathExpr count where non-empty (len > 0)."""
    errors, seen = [], set()
    volumes = {volume["name"] for volume in pod.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        path = mount["mountPath"]
        if ".." in path.split("/"):
            errors.append(f"mountPath {path!r} must not contain '..'")
        if mount["name"] not in volumes:
            errors.append(f"volumeMount {mount['name']!r}: Not found")
        if path in seen:
            errors.append(f"mountPath {path!r} must be unique")
        seen.add(path)
        sub_path, expression = mount.get("subPath") or "", mount.get("subPathExpr") or ""
        if sub_path and expression:
            errors.append("subPathExpr and subPath are mutually exclusive")
        for field, value in (("subPath", sub_path), ("subPathExpr", expression)):
            errors += [f"{field} {value!r} {error}" for error in local_descending_path_errors(value)]
    return errors


def local_descending_path_errors(path: str) -> list[str]:
    """validateLocalDescendingPath: relative, and no '..' segment (one error however many)."""
    errors = ["must be a relative path"] if path.startswith("/") else []  # "" too: neither applies
    return errors + (["must not contain '..'"] if ".." in path.split("/") else [])


def resource_errors(resources: Mapping[str, Any]) -> list[str]:
    """A container's resources, as ValidateResourceRequirements words it."""
    if not isinstance(resources, Mapping):
        return [f"resources {resources!r} is not an object"]
    errors, amounts = [], {}
    for key, value in resources.items():
        if key not in ("limits", "requests") or not isinstance(value, Mapping):
            errors.append(f"resources.{key}: not limits or requests")
            continue
        for name, quantity in value.items():
            if not _container_resource_name(name):
                errors.append(f"resources.{key}.{name}: must be a standard resource for containers")
            try:
                amounts[key, name] = amount = parse_quantity(quantity)
            except (ValueError, TypeError, ArithmeticError):
                errors.append(f"resources.{key}.{name}: {quantity!r} is not a quantity")
                continue
            if not amount.is_finite() or amount < 0:
                errors.append(f"resources.{key}.{name}: {quantity!r} must be greater than or equal to 0")
            elif "/" in name and amount != int(amount):
                errors.append(f"resources.{key}.{name}: must be an integer")
    names = {name for _, name in amounts}
    for name in names:
        limit, request = amounts.get(("limits", name)), amounts.get(("requests", name))
        if request is not None and limit is not None and request > limit:
            errors.append(f"resources.requests.{name}: must be less than or equal to {name} limit")
        if "/" in name and request is not None and limit is None:
            errors.append(f"resources.limits.{name}: Limit must be set for non overcommitable resources")
        elif "/" in name and request is not None and request != limit:
            errors.append(f"resources.requests.{name}: must be equal to {name} limit")
        if name.startswith("hugepages-") and not names & {"cpu", "memory"}:
            errors.append("resources: HugePages require cpu or memory")
        for key in ("limits", "requests"):  # validateResourceQuantityHugePageValue
            amount = amounts.get((key, name)) if name.startswith("hugepages-") else None
            if amount is not None and not _divisible_huge_pages(name, amount):
                errors.append(f"resources.{key}.{name}: is not positive integer multiple of {name}")
    return errors


def _divisible_huge_pages(name: str, quantity: Any) -> bool:
    """IsHugePageResourceValueDivisible: the page size is whole bytes, and the quantity's Value()
    (rounded up to a whole number) a multiple of it."""
    page = parse_quantity(name.removeprefix("hugepages-"))
    if page <= 0 or page * 1000 % 1000 != 0:
        return False
    return math.ceil(quantity) % int(page) == 0


def _container_resource_name(name: str) -> bool:
    """validateContainerResourceName: a standard container resource, or a qualified name outside
    the kubernetes.io domain (an extended resource)."""
    if name in STANDARD_RESOURCES:
        return True
    if name.startswith("hugepages-"):
        try:
            return parse_quantity(name.removeprefix("hugepages-")) > 0
        except (ValueError, ArithmeticError):
            return False
    prefix, slash, rest = name.partition("/")
    if (
        not slash
        or dns_1123_subdomain_errors(prefix)
        or len(rest) > 63
        or not _QUALIFIED_NAME.fullmatch(rest)
    ):
        return False
    return not (prefix == "kubernetes.io" or prefix.endswith(".kubernetes.io"))
