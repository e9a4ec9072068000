"""Minimal inline-SVG charts (no external assets): a histogram with threshold marks, grouped bars."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

BAR = "#4a78b5"
BAR2 = "#d9534f"


def _svg(width: int, height: int, body: str) -> str:
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">{body}</svg>'


def histogram(
    values: Sequence[float],
    *,
    lo: float = 0.0,
    hi: float = 100.0,
    bins: int = 20,
    width: int = 480,
    height: int = 160,
    label: str = "",
    marks: Sequence[tuple[float, str]] = (),
) -> str:
    """Counts of ``values`` in ``bins`` equal bins over [lo, hi] (outside values clipped into the end bins);
    each of ``marks`` (value, label) is drawn as a dashed vertical line, e.g. a policy threshold."""
    counts = [0] * bins
    for v in values:
        k = int((min(max(v, lo), hi) - lo) / (hi - lo) * bins)
        counts[min(k, bins - 1)] += 1
    top = max(counts) or 1
    bw = (width - 40) / bins
    step = (hi - lo) / bins
    bars = []
    for i, c in enumerate(counts):
        h = (height - 30) * c / top
        x, y = 30 + i * bw, height - 20 - h
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" fill="{BAR}">'
            f"<title>{lo + i * step:.0f}-{lo + (i + 1) * step:.0f}: {c}</title></rect>"
        )
    axis = (
        f'<line x1="30" y1="{height - 20}" x2="{width - 10}" y2="{height - 20}" stroke="#333"/>'
        f'<text x="30" y="{height - 5}" font-size="10">{lo:g}</text>'
        f'<text x="{width - 30}" y="{height - 5}" font-size="10">{hi:g}</text>'
        f'<text x="2" y="12" font-size="10">{top}</text>'
        f'<text x="{width / 2 - 40:.0f}" y="{height - 5}" font-size="10">{escape(label)}</text>'
    )
    return _svg(width, height, "".join(bars) + axis + _marks(marks, lo, hi, width, height))


def _marks(marks: Sequence[tuple[float, str]], lo: float, hi: float, width: int, height: int) -> str:
    out = []
    for i, (value, text) in enumerate(marks):
        x = 30 + (width - 40) * (min(max(value, lo), hi) - lo) / (hi - lo)
        y = 22 + 12 * i
        out.append(
            f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{height - 20}" stroke="{BAR2}" '
            f'stroke-dasharray="4 3"/><text x="{x - 4:.1f}" y="{y}" font-size="10" fill="{BAR2}" '
            f'text-anchor="end">{escape(text)}</text>'
        )
    return "".join(out)


def grouped_bars(
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    width: int = 640,
    height: int = 220,
    vmax: float = 1.0,
) -> str:
    """Bars per group for each series (values in [0, vmax]), e.g. ASR per category for base vs tuned."""
    colours = [BAR, BAR2, "#5cb85c", "#f0ad4e"]
    names = list(series)
    gw = (width - 50) / max(1, len(groups))
    bw = gw * 0.8 / max(1, len(names))
    parts = []
    for gi, g in enumerate(groups):
        for si, name in enumerate(names):
            v = float(series[name][gi])
            h = (height - 70) * min(v, vmax) / vmax
            x, y = 40 + gi * gw + si * bw, height - 50 - h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" '
                f'fill="{colours[si % len(colours)]}">'
                f"<title>{escape(name)} {escape(g)}: {v:.1%}</title></rect>"
            )
        parts.append(
            f'<text x="{40 + gi * gw:.1f}" y="{height - 35}" font-size="9" '
            f'transform="rotate(20 {40 + gi * gw:.1f} {height - 35})">{escape(g[:18])}</text>'
        )
    for si, name in enumerate(names):
        parts.append(
            f'<rect x="{40 + si * 110}" y="4" width="10" height="10" fill="{colours[si % len(colours)]}"/>'
            f'<text x="{54 + si * 110}" y="13" font-size="11">{escape(name)}</text>'
        )
    parts.append(
        f'<line x1="38" y1="{height - 50}" x2="{width - 5}" y2="{height - 50}" stroke="#333"/>'
        f'<text x="2" y="{height - 50 - (height - 70) + 4}" font-size="10">{vmax:.0%}</text>'
    )
    return _svg(width, height, "".join(parts))
