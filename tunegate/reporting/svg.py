"""Minimal inline-SVG charts (no external assets): a histogram with threshold marks, grouped bars.

Text is laid out from an estimate of its width (``text_width``: a generous ``CHAR_EM`` of the font size per
character, wider than the sans-serif fonts browsers use), so no two labels overlap: the histogram's axis
ticks are as many as their labels leave room for, each threshold mark's label has its own row above the plot,
and the axis caption its own line under the ticks; the grouped bars' category labels turn and the chart
grows downwards when they are wider than their group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

BAR = "#4a78b5"
BAR2 = "#d9534f"
FONT = 10  # px, the axis and mark labels
CHAR_EM = 0.65  # estimated width of one character, in font sizes (DejaVu Sans digits are 0.64)
TICK_GAP = 8  # px at least between two tick labels
ROW = 14  # px per threshold mark label row


def text_width(text: str, size: float = FONT) -> float:
    """The estimated rendered width of ``text`` at ``size`` px."""
    return len(text) * size * CHAR_EM


def _svg(width: float, height: float, body: str) -> str:
    w, h = math.ceil(width), math.ceil(height)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">{body}</svg>'
    )


def _text(x: float, y: float, text: str, *, anchor: str = "start", size: float = FONT, fill: str = "") -> str:
    colour = f' fill="{fill}"' if fill else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size:g}" text-anchor="{anchor}"{colour}>'
        f"{escape(text)}</text>"
    )


def _tick_step(lo: float, hi: float, span_px: float) -> float:
    """The smallest 1-2-5 step whose tick labels (as wide as the widest) fit side by side in ``span_px``."""
    widest = max(text_width(f"{lo:g}"), text_width(f"{hi:g}"), text_width(f"{(lo + hi) / 2:g}"))
    needed = (widest + TICK_GAP) * (hi - lo) / span_px  # the least step, in data units
    magnitude = 10 ** math.floor(math.log10(needed)) if needed > 0 else 1.0
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * magnitude
        ticks = [lo + i * step for i in range(int((hi - lo) / step + 1e-9) + 1)]
        px = step * span_px / (hi - lo)
        if px >= max(text_width(f"{t:g}") for t in ticks) + TICK_GAP:
            return step
    return hi - lo


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
    each of ``marks`` (value, label) is drawn as a dashed vertical line, e.g. a policy threshold, its label on
    its own row above the plot. ``height`` is the plot's and its axis's; the marks' rows add to it."""
    counts = [0] * bins
    for v in values:
        k = int((min(max(v, lo), hi) - lo) / (hi - lo) * bins)
        counts[min(k, bins - 1)] += 1
    top = max(counts) or 1
    left = max(30.0, text_width(str(top)) + 6)
    plot_w = width - left - 10
    plot_top = 8 + ROW * len(marks)
    plot_h = height - 50
    base = plot_top + plot_h  # the x axis
    bw = plot_w / bins
    step = (hi - lo) / bins

    def x_of(value: float) -> float:
        return left + plot_w * (min(max(value, lo), hi) - lo) / (hi - lo)

    parts = []
    for i, c in enumerate(counts):
        h = plot_h * c / top
        parts.append(
            f'<rect x="{left + i * bw:.1f}" y="{base - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" '
            f'fill="{BAR}"><title>{lo + i * step:.0f}-{lo + (i + 1) * step:.0f}: {c}</title></rect>'
        )
    parts.append(
        f'<line x1="{left:.1f}" y1="{base:.1f}" x2="{left + plot_w:.1f}" y2="{base:.1f}" stroke="#333"/>'
    )
    tick = _tick_step(lo, hi, plot_w)
    n_ticks = int((hi - lo) / tick + 1e-9)
    for i in range(n_ticks + 1):
        value = lo + i * tick
        x = x_of(value)
        parts.append(f'<line x1="{x:.1f}" y1="{base:.1f}" x2="{x:.1f}" y2="{base + 3:.1f}" stroke="#333"/>')
        parts.append(_text(x, base + 14, f"{value:g}", anchor="middle"))
    parts.append(_text(left - 4, plot_top + FONT * 0.8, str(top), anchor="end"))
    parts.append(_text(left - 4, base, "0", anchor="end"))
    if label:
        parts.append(_text(left + plot_w / 2, base + 30, label, anchor="middle"))
    parts.append(_marks(marks, x_of, plot_top, base, width))
    return _svg(width, base + 36, "".join(parts))


def _marks(
    marks: Sequence[tuple[float, str]],
    x_of: Callable[[float], float],
    plot_top: float,
    base: float,
    width: float,
) -> str:
    """Each mark's dashed line over the plot, and its label on its own row above the plot, its end at the
    line (or its start, when the label would not fit left of the line), kept inside the chart."""
    out = []
    for i, (value, text) in enumerate(marks):
        x = x_of(value)
        w = text_width(text)
        y = 4 + ROW * i + FONT
        if x - w >= 2:
            anchor, tx = "end", x
        else:
            anchor, tx = "start", min(max(x, 2.0), width - 2 - w)
        out.append(
            f'<line x1="{x:.1f}" y1="{plot_top:.1f}" x2="{x:.1f}" y2="{base:.1f}" stroke="{BAR2}" '
            f'stroke-dasharray="4 3"/>' + _text(tx, y, text, anchor=anchor, fill=BAR2)
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
    """Bars per group for each series (values in [0, vmax]), e.g. ASR per category for base vs tuned. A
    group's label sits centred under it when it fits its group's width, else all labels turn 35 degrees
    (and the chart grows downwards to hold them)."""
    colours = [BAR, BAR2, "#5cb85c", "#f0ad4e"]
    names = list(series)
    size = 9
    n = max(1, len(groups))
    plot_h = height - 70
    base = 20 + plot_h
    labels = [g[:18] for g in groups]
    widest = max((text_width(t, size) for t in labels), default=0.0)
    angle = math.radians(35)
    left = 40.0
    turned = widest > (width - left - 10) / n - 4
    if turned and labels:  # room on the left for the first label, which runs down to the left of its group
        left = max(left, text_width(labels[0], size) * math.cos(angle) - 0.4 * (width - left - 10) / n + 4)
    gw = (width - left - 10) / n
    bw = gw * 0.8 / max(1, len(names))
    label_h = widest * math.sin(angle) + size * 1.5 if turned else size * 1.5
    parts = []
    for gi, g in enumerate(groups):
        for si, name in enumerate(names):
            v = float(series[name][gi])
            h = plot_h * min(v, vmax) / vmax
            x, y = left + gi * gw + si * bw, base - h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" '
                f'fill="{colours[si % len(colours)]}">'
                f"<title>{escape(name)} {escape(g)}: {v:.1%}</title></rect>"
            )
        cx = left + gi * gw + gw * 0.4  # the middle of the group's bars
        if turned:  # the label's end under its group, running down to the left
            ty = base + size + 2
            parts.append(
                f'<text x="{cx:.1f}" y="{ty:.1f}" font-size="{size}" text-anchor="end" '
                f'transform="rotate(-35 {cx:.1f} {ty:.1f})">{escape(labels[gi])}</text>'
            )
        else:
            parts.append(_text(cx, base + size + 4, labels[gi], anchor="middle", size=size))
    x_legend = left
    for si, name in enumerate(names):
        colour = colours[si % len(colours)]
        parts.append(
            f'<rect x="{x_legend:.1f}" y="4" width="10" height="10" fill="{colour}"/>'
            + _text(x_legend + 14, 13, name, size=11)
        )
        x_legend += 14 + text_width(name, 11) + 16
    parts.append(
        f'<line x1="{left - 2:.1f}" y1="{base:.1f}" x2="{width - 5}" y2="{base:.1f}" stroke="#333"/>'
        + _text(left - 6, 20 + FONT * 0.8, f"{vmax:.0%}", anchor="end")
    )
    return _svg(width, base + label_h + 6, "".join(parts))
