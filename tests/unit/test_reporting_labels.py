"""Figure labels: names drawn as written, while matplotlib still draws its own tick labels as math."""

from __future__ import annotations

import base64
import html
import io
import itertools
import re
import string

import matplotlib
import pytest
from matplotlib import image

from quantship import reporting
from quantship.quantize import report  # importing the reports must not change matplotlib


def test_a_name_holding_dollars_is_drawn_as_written_and_log_ticks_stay_math() -> None:
    """`r$^{$` as a tick label raised a pyparsing error; switching mathtext off for the process instead
    drew a symlog axis' ticks as `$\\mathdefault{10^{0}}$`, in the demo report's burn-rate figure."""
    assert matplotlib.rcParams["text.parse_math"]
    fig, (names, burns) = reporting.pyplot().subplots(1, 2, figsize=(6, 2))
    names.barh([reporting.literal("r$^{$"), reporting.literal("a$x$b")], [1.0, 2.0])
    burns.scatter([1.0, 2.0], [0.5, 7.0])
    burns.set_yscale("symlog", linthresh=0.01)
    fig.canvas.draw()  # raises on a label mathtext cannot parse
    assert [label.get_text() for label in names.get_yticklabels()] == ["r\\$^{\\$", "a\\$x\\$b"]
    ticks = burns.get_yticklabels()
    assert ticks and all(tick.get_parse_math() and tick.get_text().startswith("$") for tick in ticks)
    reporting.pyplot().close(fig)


MINILM_NAMES = [  # and where each must still say which layer it is
    "/encoder/encoder/layer.0/attention/output/LayerNorm/LayerNormalization_output_0",
    "/encoder/encoder/layer.5/attention/self/Mul_output_0",
    "/encoder/encoder/layer.3/intermediate/intermediate_act_fn/Mul_1_output_0",
]


def test_a_long_module_path_is_drawn_short_with_its_layer_and_its_end() -> None:
    """MiniLM's 79-character names left the SQNR and ranges figures' axes a sixth of their width."""
    for name in MINILM_NAMES:
        shown = reporting.name_end(name)
        layer = name.split("/")[3]
        assert len(shown) <= reporting.FIGURE_NAME_CHARS and layer in shown, shown
        assert shown.endswith(name.rsplit("/", 1)[1]) and shown.startswith("…/"), shown
    assert reporting.name_end("/Cast_output_0") == "/Cast_output_0"
    assert reporting.name_end("encoder.encoder.layer.2.output.LayerNorm.bias", 18) == "…ut.LayerNorm.bias"


def test_the_sqnr_figures_of_long_names_stay_the_width_they_were_made() -> None:
    """A weights' figure grew as wide as its labels (MiniLM's run to 125 characters), shrunk on the
    page to 6-pixel text (and matplotlib warned its axes had collapsed); each is 9 inches at 110 dpi."""
    errors = [
        {"kind": "activation", "tensor": name, "op_type": "LayerNormalization", "sqnr_db": 2.0}
        for name in MINILM_NAMES
    ] + [
        {
            "kind": "weight",
            "tensor": "encoder.encoder.layer.2.output.LayerNorm.bias",
            "node": "/encoder/encoder/layer.2/output/LayerNorm/LayerNormalization",
            "op_type": "LayerNormalization",
            "sqnr_db": 30.0,
        }
    ]
    page = report._sqnr(errors)
    widths = [
        image.imread(io.BytesIO(base64.b64decode(encoded)), format="png").shape[1]
        for encoded in re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    ]
    assert len(widths) == 2 and all(width <= 9 * 110 * 1.1 for width in widths), widths  # a title may jut
    assert all(name in html.unescape(page) for name in MINILM_NAMES)  # whole in the alt text


def test_two_tensors_whose_names_draw_alike_keep_a_bar_each() -> None:
    """MiniLM's attention and output LayerNorms of one layer draw as the same short name: placed by
    their labels, both bars went on one row, the later over the other, and the last row stayed empty."""
    alike = [
        "/encoder/encoder/layer.0/attention/output/LayerNorm/LayerNormalization_output_0",
        "/encoder/encoder/layer.0/output/LayerNorm/LayerNormalization_output_0",
    ]
    assert reporting.name_end(alike[0]) == reporting.name_end(alike[1])
    errors = [
        {"kind": "activation", "tensor": name, "op_type": "LayerNormalization", "sqnr_db": sqnr}
        for name, sqnr in [(alike[0], 1.0), (alike[1], 5.0), (MINILM_NAMES[1], 9.0)]
    ]
    fig = report._sqnr_figure("activation", errors, len(errors))
    (ax,) = fig.axes
    rows = sorted((bar.get_y(), bar.get_width()) for bar in ax.patches)
    assert [width for _, width in rows] == [1.0, 5.0, 9.0]
    assert len({y for y, _ in rows}) == 3 and len(ax.get_yticklabels()) == 3
    reporting.pyplot().close(fig)


def test_names_that_would_draw_alike_are_drawn_longer_until_they_read_apart() -> None:
    """Kept on rows of their own, MiniLM's two LayerNorms of a layer still read the same, both
    …/layer.0/…/LayerNormalization_output_0: which bar is which could not be told."""
    alike = [
        "/encoder/encoder/layer.0/attention/output/LayerNorm/LayerNormalization_output_0",
        "/encoder/encoder/layer.0/output/LayerNorm/LayerNormalization_output_0",
    ]
    shown = reporting.names_apart([*alike, MINILM_NAMES[1], alike[0]])
    assert len(set(shown[:3])) == 3 and shown[3] == shown[0], shown  # the same tensor twice draws alike
    assert shown[2] == reporting.name_end(MINILM_NAMES[1])  # one drawn alike with none keeps its length
    assert all("layer.0" in s and s.endswith("LayerNormalization_output_0") for s in shown[:2]), shown
    errors = [
        {
            "kind": "weight",
            "tensor": f"encoder.encoder.layer.2.{part}.LayerNorm.bias",
            "op_type": "LayerNormalization",
            "node": f"/encoder/encoder/layer.2/{part.replace('.', '/')}/LayerNorm/LayerNormalization",
            "sqnr_db": 9.0,
        }
        for part in ("attention.output", "output")
    ]
    labels = report._short_sqnr_labels(errors)
    assert labels[0] != labels[1], labels
    fig = report._sqnr_figure("weight", errors, len(errors))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [reporting.literal(s) for s in labels]
    reporting.pyplot().close(fig)


@pytest.mark.timeout(60)  # about 0.3 s now; a character at a time, some 5 minutes or more
def test_hundreds_of_long_names_alike_but_for_their_start_are_drawn_apart_without_a_wait() -> None:
    """Names alike up to their start were widened a character at a time, every one of them drawn
    anew at each (every shortening of a name rebuilt): 1,600-character names took 133 s, and 20 of
    these paths 20 s. Each name's shortenings are now worked out once: these 600 take ~1.3 s."""
    words = ["".join(letters) for letters in itertools.product(string.ascii_lowercase, repeat=2)][:300]
    paths = [f"/model_{word}" + "/encoder/block" * 114 for word in words]  # 1,605 characters, 229 parts
    flat = [f"==>{word}." + "x" * 1600 for word in words]  # no path: drawn by their last characters

    shown = reporting.names_apart(paths + flat)

    assert len(set(shown)) == len(shown)
    assert shown[: len(paths)] == paths  # "…/model_aa/…" is no shorter than the whole name
    for name, label in zip(paths + flat, shown, strict=True):
        assert label == reporting.name_end(name, len(label)), (name, label)
    assert shown[len(paths)] == "…aa." + "x" * 1600  # "aa." and "ba." part only there
