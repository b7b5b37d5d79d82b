"""Charts as inline SVG, drawn on the server: no script, no font or library from outside."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 720, 220
LEFT, BOTTOM, TOP = 40, 28, 12


def bar_chart(bars: Sequence[tuple[datetime, int]], bucket: str, title: str) -> Markup:
    """Studies per time bucket; the axis labels thin out so they never overlap."""
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    peak = max((n for _, n in bars), default=0) or 1
    step = plot_w / max(len(bars), 1)
    every = max(1, round(len(bars) / 12))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" '
        'class="axis"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 10}" class="tick" text-anchor="end">{peak}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" class="tick" text-anchor="end">0</text>',
    ]
    for index, (start, count) in enumerate(bars):
        height = plot_h * count / peak
        x = LEFT + index * step
        parts.append(
            f'<rect class="bar" x="{x + step * 0.1:.1f}" y="{TOP + plot_h - height:.1f}" '
            f'width="{step * 0.8:.1f}" height="{height:.1f}" data-count="{count}">'
            f"<title>{escape(_label(start, bucket))}: {count}</title></rect>"
        )
        if index % every == 0:
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{HEIGHT - 8}" class="tick" '
                f'text-anchor="middle">{escape(_label(start, bucket))}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def _label(start: datetime, bucket: str) -> str:
    if bucket == "hour":
        return start.strftime("%H:00")
    if bucket == "day":
        return start.strftime("%d.%m")
    return start.strftime("%m.%Y")
