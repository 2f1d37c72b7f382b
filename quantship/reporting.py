"""Self-contained HTML pages with embedded matplotlib figures, for the quantize and demo reports.

One page style, one way to embed a figure: a report is a single file a person can mail or attach
to a ticket, with no external assets.
"""

from __future__ import annotations

import base64
import bisect
import functools
import html
import io
import itertools
import operator
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from quantship.printable import brief

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SHOWN_NAME_CHARS = 100
"""A node name is shown cut to this many characters in the report and `quantize`'s summary: a
manifest may hold names of 4096 (manifest_schema.MAX_NODE_NAME_CHARS), real ones are module paths well
under 100 (/bert/encoder/layer.11/attention/self/query/MatMul is 50)."""


def shown_name(name: str) -> str:
    """A node name as the report and the summary print it: cut short, nothing a terminal acts on."""
    return brief(name, SHOWN_NAME_CHARS)


@functools.cache
def pyplot() -> ModuleType:
    """matplotlib's pyplot, imported when a figure is first drawn: importing it cost every
    `quantship quantize`, which prints a table and draws nothing, 1.4-1.9 s of CPU (hunt H5)."""
    import matplotlib

    matplotlib.use("Agg")  # reports render headless, on servers and in CI
    from matplotlib import pyplot as plt

    return plt


def literal(text: str) -> str:
    """A label drawn as written: tensor and model names are any string, and "$...$" in one was parsed
    as mathtext (a bad formula raised, a good one drew something else). Escaped here, not switched
    off for the process: log axes draw their own tick labels as mathtext."""
    return text.replace("$", r"\$")


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;
  color:#1d2330;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}
h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #dde2ea;padding-bottom:.3rem}
.sub{color:#5b6576;margin-top:0} table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
th,td{border:1px solid #dde2ea;padding:.3rem .5rem;text-align:left;vertical-align:top} th{background:#f3f5f9}
td.num{text-align:right;font-variant-numeric:tabular-nums} img{max-width:100%}
.pass{color:#16794c;font-weight:600} .fail{color:#b42318;font-weight:600} code{font-size:.85rem}
.nb{white-space:nowrap} .scroll{overflow-x:auto} .cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{border:1px solid #dde2ea;border-radius:6px;padding:.6rem 1rem;min-width:150px}
.card b{display:block;font-size:1.3rem}
"""


def percent(value: float | None, signed: bool = False) -> str:
    """A ratio as a percentage for people: 0.0123 -> '1.23%'; None -> '-'."""
    if value is None:
        return "-"
    return f"{value:+.2%}" if signed else f"{value:.2%}"


def size_change(fp32_bytes: int, int8_bytes: int, digits: int = 2) -> str:
    """INT8's file against FP32's: '3.98x smaller', or '1.22x larger' (a small model's quantize and
    dequantize nodes can outweigh its int8 weights), never '0.82x smaller'."""
    if int8_bytes <= fp32_bytes:
        return f"{fp32_bytes / max(int8_bytes, 1):.{digits}f}x smaller"
    return f"{int8_bytes / max(fp32_bytes, 1):.{digits}f}x larger"


def new_figure(width: float = 9, height: float = 3.5) -> tuple[Figure, Any]:
    fig, axes = pyplot().subplots(figsize=(width, height), layout="constrained")
    return fig, axes


def figure(fig: Figure, alt: str) -> str:
    """The figure as an <img> with the PNG inlined; closes the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")  # legends placed beside the axes too
    pyplot().close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def table(headers: Sequence[str | Raw], rows: Iterable[Sequence[Any]]) -> str:
    """A table in a box that scrolls sideways: at 800 px the trials' ten columns ran off the page's
    right edge, cut where no one could scroll to them (a file's sha256 is 64 characters, unbroken)."""
    head = "".join(f"<th>{h.html if isinstance(h, Raw) else html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def facts(rows: Iterable[tuple[str, Any]]) -> str:
    """A table of named values, each name its row's header: no header row above, where an empty one
    (the drift loop's) read as a fault of the page."""
    body = "".join(f"<tr><th>{html.escape(name)}</th>{_cell(value)}</tr>" for name, value in rows)
    return f'<div class="scroll"><table>{body}</table></div>'


NBSP = "\u00a0"


def quantity(number: str, unit: str) -> str:
    """A number and its unit, joined by a non-breaking space: a narrow column of the decision log
    wrapped "14.6 s" as "14.6" over "s"."""
    return f"{number}{NBSP}{unit}"


def _cell(value: Any) -> str:
    if isinstance(value, Raw):
        return f"<td>{value.html}</td>"
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape('-' if value is None else str(value))}</td>"


def fill(template: str, *values: Any) -> str:
    """`template`, trusted markup, with each `{}` filled by a value escaped: how what a manifest
    holds (any string: it is edited by hand, or hostile) goes into a sentence of a page."""
    return template.format(*(html.escape("-" if value is None else str(value)) for value in values))


FIGURE_NAME_CHARS = 44
"""A tensor or node name is drawn as a figure's label in at most this many characters: MiniLM's
(/encoder/encoder/layer.0/attention/output/LayerNorm/LayerNormalization_output_0, 79) left the SQNR
and ranges figures' axes a sixth of their width, the ranges' ticks written over each other, and a
weights' figure as wide as its labels, shrunk on the page to 6-pixel text."""


def name_end(name: str, chars: int = FIGURE_NAME_CHARS) -> str:
    """`name` as a figure's label draws it, in at most `chars` characters: a module path loses its
    leading parts first (…/layer.5/attention/self/Mul_output_0), never a numbered one (a layer's
    index says which of six alike it is), then the parts after that one
    (…/layer.0/…/LayerNormalization_output_0); any other name keeps its end."""
    return _Shortenings(name).label(chars)


class _Shortenings:
    """The labels `name_end` may draw a name as, in the order it tries them, each the longest first:
    the path less its leading parts (up to the first numbered one), then that part and the path's
    end less the parts between; the first that fits a budget is its label, else the name's last
    characters. Each is a cut of the name, so only their lengths are kept (`starts`: where each part
    begins) and a label is cut when asked for: building every one took O(parts x length) a call."""

    def __init__(self, name: str) -> None:
        self.name = name
        parts = name.split("/")
        self.starts = list(itertools.accumulate((len(part) + 1 for part in parts[:-1]), initial=0))
        lead = 0
        self.leading: list[int] = []  # "…/" + the name from part `lead` on, for lead = 1, 2, ...
        while lead < len(parts) - 1 and not any(c.isdigit() for c in parts[lead]):
            lead += 1
            self.leading.append(2 + len(name) - self.starts[lead])
        self.lead = lead
        self.head = ("…/" if lead else "") + parts[lead]
        # head + "/…/" + the name from part `cut + 1` on, for cut = lead + 1, ..., len(parts) - 2
        self.cuts = [
            len(self.head) + 3 + len(name) - self.starts[cut + 1] for cut in range(lead + 1, len(parts) - 1)
        ]

    def label(self, chars: int) -> str:
        name = self.name
        if len(name) <= chars:
            return name
        if (i := _first_within(self.leading, chars)) is not None:
            return "…/" + name[self.starts[i + 1] :]
        if (i := _first_within(self.cuts, chars)) is not None:
            return f"{self.head}/…/" + name[self.starts[self.lead + i + 2] :]
        return "…" + name[-(chars - 1) :]


def _first_within(lengths: list[int], chars: int) -> int | None:
    """The index of the first of `lengths` (each shorter than the one before) at most `chars`."""
    first = bisect.bisect_left(lengths, -chars, key=operator.neg)
    return first if first < len(lengths) else None


def names_apart(names: Sequence[str], chars: int = FIGURE_NAME_CHARS) -> list[str]:
    """Each name as `name_end` draws it in `chars` characters, but names that would draw alike drawn
    longer, a character at a time, until they no longer do: MiniLM's attention and output LayerNorms
    of a layer both drew as …/layer.0/…/LayerNormalization_output_0, two rows of one figure that read
    the same. A label that says which tensor it is matters more than the figure's width. Each name's
    shortenings are worked out once (`_Shortenings`): rebuilt at every character, hundreds of
    1,600-character names alike up to their start took 133 s."""
    shortenings = {name: _Shortenings(name) for name in names}
    budgets = [chars] * len(names)
    while True:
        shown = [shortenings[name].label(budget) for name, budget in zip(names, budgets, strict=True)]
        drawn_as: dict[str, set[str]] = {}
        for name, label in zip(names, shown, strict=True):
            drawn_as.setdefault(label, set()).add(name)
        alike = [
            i for i, label in enumerate(shown) if len(drawn_as[label]) > 1 and len(names[i]) > budgets[i]
        ]
        if not alike:  # apart, or each alike drawn whole already
            return shown
        for i in alike:
            budgets[i] += 1


def breakable(name: str) -> str:
    """`name` escaped, with a line break allowed after each "/" of its path: a cell of MiniLM's names
    (/encoder/encoder/layer.0/attention/self/Softmax, no space in 47 characters) made the trials'
    table run past the page's width. <wbr>, not a zero-width space: a name copied from the page for
    --exclude must be the name."""
    parts = [html.escape(part) for part in name.split("/")]
    if len(parts) > 1 and not parts[0]:  # the leading "/" kept with what follows: alone, it ended a line
        parts = [f'<span class="nb">/{parts[1]}</span>', *parts[2:]]
    return "/<wbr>".join(parts)


def breakable_words(text: str) -> Raw:
    """`text` escaped, with a line break allowed after each "_": snake_case words (unfused_in_float,
    top1_agreement) were the widest of the trials' columns, each one line."""
    return Raw("_<wbr>".join(html.escape(part) for part in text.split("_")))


class Raw:
    """Markup to place in a table cell as is (already escaped by the caller)."""

    def __init__(self, markup: str) -> None:
        self.html = markup


def verdict(passed: bool, text: str) -> Raw:
    return Raw(f'<span class="{"pass" if passed else "fail"}">{html.escape(text)}</span>')


def cards(items: Sequence[tuple[str, str]]) -> str:
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card">{html.escape(label)}<b>{html.escape(value)}</b></div>'
            for label, value in items
        )
        + "</div>"
    )


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<h2>{html.escape(name)}</h2>{content}" for name, content in sections)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p class='sub'>{html.escape(subtitle)}</p>{body}</body></html>\n"
    )
