"""`quantship report` on manifests as they may arrive: edited by hand, hostile, or naming tensors oddly.

A manifest is free text to the report: whatever it holds is shown, never run, and a field of the
wrong type is refused when the artifact loads (one line, exit 3), not met later as a traceback."""

from __future__ import annotations

import html
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from click.testing import CliRunner
from matplotlib.colors import to_rgba
from rich.console import Console

from quantship import activations, artifact, reporting
from quantship.cli import main
from quantship.quantize import gate_metrics, report, summary

MARKUP = "\"'><q-injected>"
"""Closes an attribute and a tag, then opens one of its own: must arrive as text, escaped."""


def _cli(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _edited(good: artifact.Artifact, target: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of `good` whose manifest `edit` changed, unsigned (`report` needs no signature)."""
    shutil.copytree(good.root, target)
    manifest = json.loads((target / artifact.MANIFEST_FILE).read_text())
    edit(manifest)
    (target / artifact.MANIFEST_FILE).write_text(json.dumps(manifest))
    return target


def _marked(value: Any) -> Any:
    """Every string in `value`, markup added (dict keys are left: they are what the report looks up)."""
    if isinstance(value, str):
        return MARKUP + value
    if isinstance(value, list):
        return [_marked(item) for item in value]
    if isinstance(value, dict):
        return {key: _marked(item) for key, item in value.items()}
    return value


def _mark_every_string(manifest: dict[str, Any]) -> None:
    # Optional strings the good artifact leaves null, and keys of the maps shown as they are.
    manifest["tuning"]["advice"] = "try more data"
    manifest["trials"][0]["error"] = "onnxruntime said no"
    manifest["warnings"].append("a warning")
    manifest["validation"]["metrics"][MARKUP] = 0.5
    manifest["fallback_ops"][MARKUP] = 1
    for section in ("quantization", "runtime", "calibration"):
        manifest[section][MARKUP] = MARKUP
    for key, value in list(manifest.items()):
        if key not in ("files", "format_version"):
            manifest[key] = _marked(value)


def test_markup_in_any_string_of_the_manifest_is_shown_as_text(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """validation.samples, hardware.vnni and tuning.seconds, peak_rss_mb and chosen went into the page
    as they were: a <script> there ran in the browser of whoever opened the report."""
    edited = _edited(good_artifact, tmp_path / "a", _mark_every_string)
    artifact.load_artifact(edited)  # the schema takes any string where a string belongs
    # (verify refuses it, as a server would: its ranges and output name tensors the model lacks)
    code, _, err = _cli("report", edited, "-o", tmp_path / "r.html")
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    assert "<q-injected>" not in page
    shown = page.count("&quot;&#x27;&gt;&lt;q-injected&gt;")
    assert shown >= 30, shown  # and the marked fields are there, as text
    metric = "&quot;&#x27;&gt;&lt;q-injected&gt;top1_<wbr>accuracy"
    assert f"<th>{metric}</th>" in page  # escaped once: the trials' header read &amp;quot;...


def test_the_page_escapes_even_what_the_schema_refuses(good_artifact: artifact.Artifact) -> None:
    """The numbers and flags written into sentences went in raw; the schema refuses markup there now,
    and the page does not count on it (an Artifact built in memory skips the loading checks)."""
    manifest = json.loads(json.dumps(good_artifact.manifest))
    manifest["validation"]["samples"] = MARKUP
    manifest["validation"]["hardware"]["vnni"] = MARKUP
    manifest["tuning"].update(seconds=MARKUP, peak_rss_mb=MARKUP, chosen=MARKUP)
    page = report.render(artifact.Artifact(root=good_artifact.root, manifest=manifest, signed=False))
    assert "<q-injected>" not in page
    assert page.count("&quot;&#x27;&gt;&lt;q-injected&gt;") == 5


@pytest.mark.parametrize(
    ("where", "edit"),
    [
        (
            "['validation']['samples']",
            lambda m: m["validation"].update(samples="<img src=x onerror=alert(1)>"),
        ),
        ("['validation']['hardware']['vnni']", lambda m: m["validation"]["hardware"].update(vnni="<script>")),
        ("['tuning']['seconds']", lambda m: m["tuning"].update(seconds="<b>s</b>")),
        ("['tuning']['peak_rss_mb']", lambda m: m["tuning"].update(peak_rss_mb="<i>rss</i>")),
        ("['tuning']['chosen']", lambda m: m["tuning"].update(chosen="<script>")),
        ("['trials'][0]", lambda m: m.update(trials=[{}])),
        ("['sensitivity'][0]", lambda m: m.update(sensitivity=[{"tensor": "a"}])),
        ("['validation']['value']", lambda m: m["validation"].update(value="0.0")),
        ("['validation']['fp32']", lambda m: m["validation"].update(fp32="x")),
        ("['tuning']['advice']", lambda m: m["tuning"].update(advice=5)),
        ("['warnings'][0]", lambda m: m.update(warnings=[1])),
        ("['validation']['metric']", lambda m: m["validation"].update(metric=["x"])),
    ],
)
def test_a_field_of_the_wrong_type_is_refused_on_loading_in_one_line(
    good_artifact: artifact.Artifact, tmp_path: Path, where: str, edit: Callable[[dict[str, Any]], None]
) -> None:
    """Each passed `verify`, then `report` died with a traceback (KeyError, TypeError, ValueError)."""
    edited = _edited(good_artifact, tmp_path / "a", edit)
    for command in (["verify", edited], ["report", edited, "-o", tmp_path / "r.html"]):
        code, _, err = _cli(*command)
        assert code == 3, err  # ExitCode.REFUSED
        assert len(err.strip().splitlines()) == 1 and where in err, err
    assert not (tmp_path / "r.html").exists()


def test_tensor_names_holding_mathtext_are_drawn_as_written(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """An ONNX name is any string: `r$^{$` made matplotlib parse a formula, and the report died with a
    pyparsing traceback (a valid one, `$x^2$`, drew a superscript instead of the name)."""
    names = ["r$^{$", "h$\\undefinedcommand{1}$"]

    def rename(manifest: dict[str, Any]) -> None:
        for section in ("sensitivity", "activation_ranges"):
            for i, entry in enumerate(manifest[section]):  # each range its own tensor (one range a tensor)
                entry["tensor"] = names[i % len(names)] + (str(i) if i >= len(names) else "")

    edited = _edited(good_artifact, tmp_path / "a", rename)
    code, _, err = _cli("report", edited, "-o", tmp_path / "r.html")
    assert code == 0, err
    assert "<td>r$^{$</td>" in (tmp_path / "r.html").read_text()


def test_the_advice_is_shown_once_for_a_manifest_that_also_noted_it_as_a_warning(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """quantize noted the advice among the warnings as well: the report said it twice."""
    advice = "closest: trial 0. Next: a larger --max-trials."

    def failed(manifest: dict[str, Any]) -> None:
        manifest["validation"]["gate"] = "failed"
        manifest["tuning"]["advice"] = advice
        manifest["warnings"] = [f"no trial passed the gate (g); {advice}", "another warning"]

    edited = _edited(good_artifact, tmp_path / "a", failed)
    assert _cli("report", edited, "-o", tmp_path / "r.html")[0] == 0
    page = (tmp_path / "r.html").read_text()
    assert page.count(advice) == 1 and "<p>Warning: another warning</p>" in page


def test_the_trials_figure_has_one_unit_and_marks_an_errored_trial(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """Bars were labelled in percent on an axis (and a `gate 0.005` legend) in fractions, and an
    errored trial was a 0 bar: for a loss, the best-looking one."""

    def with_an_errored_trial(manifest: dict[str, Any]) -> None:
        first = manifest["trials"][0]
        errored = {**first, "number": 1, "value": None, "passed": False, "error": "onnxruntime said no"}
        manifest["trials"] = [first, errored]

    edited = _edited(good_artifact, tmp_path / "a", with_an_errored_trial)
    assert _cli("report", edited, "-o", tmp_path / "r.html")[0] == 0
    page = (tmp_path / "r.html").read_text()
    assert (
        "tuning trials: relative accuracy loss (%) by trial; gate 0.50%; errored (no value): trial 1" in page
    )


def test_an_int8_file_larger_than_fp32_is_said_to_be_larger(good_artifact: artifact.Artifact) -> None:
    """A tiny model's quantize/dequantize nodes can outweigh its int8 weights: the card read
    `0.82x smaller` (the summary `(0.8x)`)."""
    manifest = json.loads(json.dumps(good_artifact.manifest))
    files = manifest["files"]
    files[artifact.MODEL_FILE]["size"], files[artifact.REFERENCE_FILE]["size"] = 1220, 1000
    larger = artifact.Artifact(root=good_artifact.root, manifest=manifest, signed=False)
    assert "size<b>1.22x larger</b>" in report.render(larger)
    assert "size<b>" in report.render(good_artifact) and "x smaller</b>" in report.render(good_artifact)
    console = Console(record=True, width=200)
    console.print(summary.table([("tiny", larger)]))
    printed = console.export_text()
    assert "1→1 KiB (1.2x larger)" in printed
    metric = gate_metrics.Metric(manifest["validation"]["metric"])  # the gated number beside what passes
    assert f"({gate_metrics.bound(metric, manifest['validation']['threshold'])})" in printed, printed


def test_the_report_of_an_archive_names_the_archive_not_its_scratch_copy(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """The subtitle showed /tmp/quantship-artifact-xxx/artifact, removed by the time anyone read it."""
    packed = tmp_path / "digits-int8.tar.gz"
    assert _cli("pack", good_artifact.root, packed)[0] == 0
    assert _cli("report", packed, "-o", tmp_path / "r.html")[0] == 0
    page = (tmp_path / "r.html").read_text()
    assert "<title>quantship artifact report: digits-int8.tar.gz</title>" in page
    assert f"model.onnx -&gt; {packed}  ·" in page and "quantship-artifact-" not in page


def test_the_report_of_the_working_directory_names_it(
    good_artifact: artifact.Artifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`quantship report .` titled the page 'quantship artifact report: ' (Path('.').name is empty)."""
    monkeypatch.chdir(good_artifact.root)
    page = report.render(good_artifact, given=Path("."))
    assert f"<title>quantship artifact report: {good_artifact.root.resolve().name}</title>" in page


def test_the_ranges_figure_says_its_units_and_a_softmax_bound_is_its_own(
    qoperator_skewed_artifact: artifact.Artifact,
) -> None:
    """The figure had no axis label or title, and QLinearSoftmax's [0, 1] read `relu/clip folded`."""
    page = report.render(qoperator_skewed_artifact)
    assert "activation value (float, in the tensor&#x27;s own units)" in page
    softmax = [r for r in qoperator_skewed_artifact.activation_ranges if r.requantized_by == "QLinearSoftmax"]
    assert len(softmax) == 1, qoperator_skewed_artifact.activation_ranges
    row = page.split(f"<tr><td>{softmax[0].float_tensor}</td>")[1].split("</tr>")[0]
    assert row.endswith(
        f"<td>QLinearSoftmax&#x27;s own output bound [0, 1]</td><td>{softmax[0].tensor}</td>"
    ), row


def test_the_ranges_figure_says_what_it_leaves_out_and_keeps_small_ranges_visible() -> None:
    """gpt2's 84 ranges were cut to 40 without a word, on a linear axis that its Pow output
    ([-720, 289]) set: every other bar a sliver."""
    many = [activations.ActivationRange(f"t{i}", -1.0, 1.0, 2 / 255) for i in range(45)]
    page = report._ranges(many)
    assert "(the first 40 of 45; the table has all)" in page
    assert "symmetric log" not in page, "ranges of one size: a linear axis"
    wide = [
        activations.ActivationRange("pow", -720.0, 289.0, 4.0),
        activations.ActivationRange("ln", -0.8, 0.9, 0.01),
    ]
    page = report._ranges(wide)
    assert "symmetric log scale past ±0.1" in page and "the first" not in page


def test_trials_in_a_narrow_band_get_an_axis_that_shows_them_apart_from_the_gate() -> None:
    """Agreement 0.999 against a gate of 0.995 on an axis from 0: one bar height and one line."""
    trial = {"number": 0, "stage": "recipe", "value": 0.999, "passed": True, "threshold": 0.995}
    assert "top1_agreement, axis not from 0 by trial; gate 0.995" in report._trials_figure(
        [trial], "top1_agreement"
    )
    far = {**trial, "value": 0.5, "passed": False}
    assert "axis not from 0" not in report._trials_figure([far], "top1_agreement")


def test_a_trial_whose_value_is_zero_is_marked_at_zero_in_its_colour() -> None:
    """MiniLM's static trials measured cosine agreement 0: bars of no height, blank columns beside
    the dynamic trials' bars, though they were the worst failures."""
    zero = {"number": 0, "stage": "recipe", "value": 0.0, "passed": False, "threshold": 0.995}
    passed = {**zero, "number": 1, "value": 1.0, "passed": True}
    fig, _ = report._trials_plot([zero, passed], "cosine_agreement")
    (ax,) = fig.axes
    marks = [
        (tuple(offset), tuple(colour))
        for collection in ax.collections
        for offset, colour in zip(collection.get_offsets(), collection.get_edgecolors(), strict=True)
    ]
    reporting.pyplot().close(fig)
    red, green = to_rgba("#b42318"), to_rgba("#16794c")
    assert marks == [((0.0, 0.0), red), ((1.0, 1.0), green)]


def test_the_names_a_trial_left_in_float_may_break_at_their_slashes_and_copy_whole() -> None:
    """MiniLM's 47-character names, no space in them, ran the trials' table past the page."""
    names = ["/encoder/encoder/layer.0/attention/self/Softmax", "/encoder/Where_1", "<q>/x"]
    trial = {
        "number": 0,
        "stage": "recipe",
        "excluded": names,
        "quantized_nodes": 1,
        "value": 0.5,
        "passed": False,
        "seconds": 1.0,
    }
    page = report._trials([trial], {})
    assert '<span class="nb">/encoder</span>/<wbr>encoder/<wbr>layer.0/<wbr>attention/<wbr>self/' in page
    assert "&lt;q&gt;/<wbr>x" in page  # still escaped
    (cell,) = [cell for cell in re.findall(r"<td[^>]*>(.*?)</td>", page) if "Softmax" in cell]
    assert html.unescape(re.sub("<[^>]+>", "", cell)) == ", ".join(names)  # what a person copies


def test_a_setting_a_dynamic_recipe_has_none_of_reads_as_a_dash_not_none(
    good_artifact: artifact.Artifact,
) -> None:
    """A dynamic artifact's configuration listed activation_type, batch_size, calibration, ... as "None"."""
    manifest = json.loads(json.dumps(good_artifact.manifest))
    manifest["quantization"]["calibration"] = None
    dynamic = artifact.Artifact(root=good_artifact.root, manifest=manifest, signed=False)
    page = report._config(dynamic.manifest, "no")
    assert "<td>calibration</td><td>-</td>" in page and "None" not in page


def test_a_weight_is_named_by_the_node_that_reads_it(good_artifact: artifact.Artifact) -> None:
    """Weights' SQNR bars were named by initializer (EfficientNet-Lite0's `onnx::Conv_971`), where a
    user leaves nodes in float (`--exclude NODE`)."""
    weights = [e for e in good_artifact.manifest["sensitivity"] if e["kind"] == "weight"]
    nodes = {
        n.name: n.op_type for n in onnx.load(str(good_artifact.root / artifact.REFERENCE_FILE)).graph.node
    }
    assert weights and all(nodes.get(e["node"]) == e["op_type"] for e in weights), weights
    page = report.render(good_artifact)
    drawn = page.split('alt="weight SQNR, worst first: ')[1].split('"')[0]
    assert drawn.startswith(f"{weights[0]['node']}  ({weights[0]['op_type']}: {weights[0]['tensor']})")


def test_a_weight_of_an_older_manifest_is_named_by_itself(good_artifact: artifact.Artifact) -> None:
    manifest = json.loads(json.dumps(good_artifact.manifest))
    for entry in manifest["sensitivity"]:
        if entry["kind"] == "weight":
            entry.pop("node", None), entry.pop("op_type", None)
    first = next(e for e in manifest["sensitivity"] if e["kind"] == "weight")
    page = report.render(artifact.Artifact(root=good_artifact.root, manifest=manifest, signed=False))
    assert f'alt="weight SQNR, worst first: {first["tensor"]}, ' in page


def test_the_ranges_name_tensors_as_the_fp32_model_does() -> None:
    """EfficientNet-Lite0's output range read `logits_QuantizeLinear_Input`, a name onnxruntime gives
    what writes a quantized graph output, and a QOperator range its QLinear op's int8 output
    (`..._quantized`): neither is in the model the user has."""
    page = report._ranges(
        [
            activations.ActivationRange("logits_QuantizeLinear_Input", -8.0, 8.0, 16 / 255),
            activations.ActivationRange(
                "fc_out_quantized",
                -4.0,
                4.0,
                8 / 255,
                requantized_by="QGemm",
                zero_point=0,
                float_tensor="fc_out",
            ),
            activations.ActivationRange("hidden", -1.0, 1.0, 2 / 255),
        ]
    )
    assert "<tr><td>logits</td>" in page and "<td>logits_QuantizeLinear_Input</td></tr>" in page
    assert "<tr><td>fc_out</td>" in page and "<td>fc_out_quantized</td></tr>" in page
    assert "<tr><td>hidden</td>" in page and page.split("<tr><td>hidden</td>")[1].split("</tr>")[0].endswith(
        "<td>-</td>"
    )
    assert 'alt="activation ranges' in page


def test_every_table_scrolls_sideways_within_the_page(good_artifact: artifact.Artifact) -> None:
    """At 800 px the trials' table ran off the page's right edge, its last columns cut where no one
    could scroll to them; a file's sha256 (64 characters, unbroken) still needs more than that."""
    page = report.render(good_artifact)
    assert page.count("<table>") >= 4
    assert page.count('<div class="scroll"><table>') == page.count("<table>")
    assert ".scroll{overflow-x:auto}" in page


def test_the_trials_snake_case_words_may_break_at_their_underscores_and_copy_whole() -> None:
    """unfused_in_float and top1_agreement, one line each, were the trials' widest columns: with them,
    the ten columns did not fit 800 px."""
    trial = {
        "number": 0,
        "stage": "unfused_in_float",
        "excluded": [],
        "quantized_nodes": 1,
        "value": 1.0,
        "passed": True,
        "seconds": 1.0,
        "metric": "top1_agreement",
    }
    page = report._trials([trial], {})
    cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", page)
    assert "unfused_<wbr>in_<wbr>float" in cells
    assert "top1_<wbr>agreement" in cells
    assert {html.unescape(re.sub("<[^>]+>", "", cell)) for cell in cells} >= {
        "unfused_in_float",
        "top1_agreement",
    }
