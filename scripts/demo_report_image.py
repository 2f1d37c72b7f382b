"""The README's picture of the demo report: three of its figures under their headings, from one run.

Usage: python scripts/demo_report_image.py [REPORT] [OUT]
       (defaults: build/demo/reports/demo.html, docs/images/demo-report.png; run `make demo` first)

Takes the figures as the report embeds them (no redrawing: the picture is what the report showed),
stacks them under the report's own section headings and a title with the run's date, and writes a
palette PNG (about a third of the size of a full-colour one, the figures being a few flat colours).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import re
import sys
from pathlib import Path

import matplotlib
from PIL import Image, ImageDraw, ImageFont

FIGURES = ("canary weight over time", "clip_rate over time", "activation drift over time")
"""The figures shown, by their alt text: the rollouts and their decisions, the clipping that rolled
the skewed canary back, and the drift loop."""
MARGIN, GAP = 20, 16
FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def figures(report: str) -> dict[str, tuple[str, Image.Image]]:
    """Each figure of the report by its alt text, with the heading of its section."""
    found = {}
    for heading, section in re.findall(r"<h2>(.*?)</h2>(.*?)(?=<h2>|</body>)", report, re.S):
        for alt, data in re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', section):
            found[html.unescape(alt)] = (
                html.unescape(heading),
                Image.open(io.BytesIO(base64.b64decode(data))),
            )
    return found


def compose(chosen: list[tuple[str, Image.Image]], title: str) -> Image.Image:
    title_font = ImageFont.truetype(str(FONTS / "DejaVuSans-Bold.ttf"), 24)
    heading_font = ImageFont.truetype(str(FONTS / "DejaVuSans-Bold.ttf"), 17)
    width = max(image.width for _, image in chosen) + 2 * MARGIN
    height = MARGIN + 40 + sum(30 + image.height + GAP for _, image in chosen) + MARGIN
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, MARGIN), title, font=title_font, fill="#1d2330")
    y = MARGIN + 40
    for heading, image in chosen:
        draw.text((MARGIN, y), heading, font=heading_font, fill="#1d2330")
        canvas.paste(image.convert("RGB"), (MARGIN, y + 30))
        y += 30 + image.height + GAP
    return canvas


def main() -> None:
    report = Path(sys.argv[1] if len(sys.argv) > 1 else "build/demo/reports/demo.html")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/images/demo-report.png")
    found = figures(report.read_text())
    missing = [alt for alt in FIGURES if alt not in found]
    if missing:
        sys.exit(f"error: {report} has no figure {', '.join(missing)}")
    day = datetime.date.fromtimestamp(report.stat().st_mtime).isoformat()
    picture = compose([found[alt] for alt in FIGURES], f"quantship demo report (make demo, {day})")
    picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"{out}: {out.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
