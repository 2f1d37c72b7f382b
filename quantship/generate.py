"""`make generate`: every checked-in generated file, written from code.

Each entry maps a path (relative to the repository root) to the function that renders it. A test
renders them all again and compares with the files on disk, so a change to the code that generates
them (slo.py, the CRD schema, the dashboards) cannot land without the regenerated files.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def outputs() -> dict[str, Callable[[], str]]:
    """Path -> renderer. Imports lazily: each renderer pulls in only what it needs."""
    from quantship import oncall
    from quantship.operator import crd, values_schema

    return {
        **oncall.generated_files(),  # Prometheus rules, Grafana dashboards, and their copies in the chart
        "manifests/crd.yaml": crd.render,
        "helm/quantship/templates/crd.yaml": crd.render_chart_template,
        values_schema.PATH: values_schema.render,  # its example.* pieces: the CRD's
        values_schema.ARTIFACT_URI_RULE_PATH: values_schema.render_artifact_uri_rule,
    }


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for relative, render in outputs().items():
        path = ROOT / relative
        text = render()
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(relative)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {relative}")
    if stale:
        print("stale generated files (run `make generate`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
