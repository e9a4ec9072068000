from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from tunegate.reporting.svg import grouped_bars, histogram


def test_histogram_counts_every_value_once() -> None:
    svg = histogram([0, 5, 5, 99, 100, 150], bins=10)
    assert svg.startswith("<svg") and svg.count("<rect") == 10
    assert "0-10: 3" in svg and "90-100: 3" in svg  # out-of-range values are clipped into the end bins


def test_grouped_bars_escape_and_legend() -> None:
    svg = grouped_bars(["a<b", "c"], {"base": [0.1, 0.2], "fine-tuned": [0.5, 1.0]})
    assert svg.count("<rect") == 4 + 2 and "a&lt;b" in svg and "fine-tuned c: 100.0%" in svg


def test_histogram_draws_threshold_marks_at_their_value() -> None:
    svg = histogram([1, 2, 3], marks=[(50.0, "act from risk 50"), (100.0, "max")], width=440)
    assert svg.count('stroke-dasharray="4 3"') == 2
    assert 'x1="230.0"' in svg and "act from risk 50" in svg  # 30 + 400 * 0.5


# --- label geometry (issue 28: the histogram's labels overlapped its bars, its lines and each other) --------

Box = tuple[float, float, float, float]  # x0, y0, x1, y1
CHAR_EM = 0.65  # a generous width per character, in font sizes (DejaVu Sans, Chromium's default, is ~0.6)


def _parse(svg: str) -> tuple[ET.Element, float, float]:
    root = ET.fromstring(svg)
    return root, float(root.attrib["width"]), float(root.attrib["height"])


def _tag(el: ET.Element) -> str:
    return el.tag.rsplit("}", 1)[-1]


def text_boxes(svg: str) -> list[tuple[str, Box]]:
    """Every unrotated label's box: its width estimated from its characters, its height from the font size."""
    root, _, _ = _parse(svg)
    out = []
    for el in root.iter():
        if _tag(el) != "text" or "transform" in el.attrib:
            continue
        text, size = el.text or "", float(el.attrib.get("font-size", "10"))
        x, y, w = float(el.attrib["x"]), float(el.attrib["y"]), len(text) * size * CHAR_EM
        anchor = el.attrib.get("text-anchor", "start")
        x0 = x - w if anchor == "end" else x - w / 2 if anchor == "middle" else x
        out.append((text, (x0, y - 0.8 * size, x0 + w, y + 0.25 * size)))
    return out


def shape_boxes(svg: str) -> list[Box]:
    """The bars (rects of some height) and the threshold lines (dashed)."""
    root, _, _ = _parse(svg)
    out = []
    for el in root.iter():
        a = el.attrib
        if _tag(el) == "rect" and float(a["height"]) > 0:
            x, y = float(a["x"]), float(a["y"])
            out.append((x, y, x + float(a["width"]), y + float(a["height"])))
        elif _tag(el) == "line" and "stroke-dasharray" in a:
            out.append((float(a["x1"]) - 0.5, float(a["y1"]), float(a["x2"]) + 0.5, float(a["y2"])))
    return out


def overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


TYPICAL = [
    # the risk histogram of a blocked job: most examples ordinary, a tail at the top, the policy's two marks
    {
        "values": [20.0 + i for i in range(24)] + [99.5 - i * 0.2 for i in range(8)],
        "marks": [(90.0, "acts from risk 90"), (99.0, "top 10% from 99")],
    },
    # marks at the same value, and marks near the left edge (labels that cannot end at their line)
    {"values": [50.0] * 10, "marks": [(95.0, "acts from risk 95"), (95.0, "top 5% from 95")]},
    {"values": [1.0, 2.0, 3.0], "marks": [(2.0, "acts from risk 2"), (3.0, "top 50% from 3")]},
    # thousands of examples (a long count label), a narrow chart
    {"values": [float(i % 100) for i in range(25_000)], "marks": [(97.0, "acts from risk 97")]},
    {"values": [10.0, 90.0], "marks": [(80.0, "acts from risk 80")], "width": 300},
]


@pytest.mark.parametrize("case", TYPICAL, ids=["blocked", "same-value", "left-edge", "many", "narrow"])
def test_histogram_labels_do_not_overlap(case: dict[str, Any]) -> None:
    svg = histogram(
        case["values"],
        label="risk (0-100, vs ordinary examples)",
        marks=case["marks"],
        width=case.get("width", 480),
    )
    _, width, height = _parse(svg)
    labels = text_boxes(svg)
    shapes = shape_boxes(svg)
    for i, (text, box) in enumerate(labels):
        assert 0 <= box[0] and box[2] <= width and 0 <= box[1] and box[3] <= height, (
            text,
            box,
            width,
            height,
        )
        for other, obox in labels[i + 1 :]:
            assert not overlap(box, obox), f"{text!r} {box} overlaps {other!r} {obox}"
        for shape in shapes:
            assert not overlap(box, shape), f"{text!r} {box} overlaps a bar or a threshold line {shape}"
    assert len(labels) >= 5 + len(case["marks"])  # ticks, the count, the caption and each mark's label


def test_histogram_ticks_follow_the_label_widths() -> None:
    wide = [t for t, _ in text_boxes(histogram([1.0], width=900))]
    narrow = [t for t, _ in text_boxes(histogram([1.0], width=200))]
    assert {"0", "50", "100"} <= set(wide) and "10" in wide  # room for a tick every 10
    assert {"0", "100"} <= set(narrow) and "10" not in narrow  # fewer ticks when they would not fit


@pytest.mark.parametrize("n", [3, 10, 16])
def test_category_labels_do_not_overlap(n: int) -> None:
    from models.policy import harmful_categories

    cats = (list(harmful_categories()) * 2)[:n]
    svg = grouped_bars(cats, {"base": [0.1] * n, "fine-tuned": [0.5] * n})
    root, width, height = _parse(svg)
    flat = text_boxes(svg)
    for i, (text, box) in enumerate(flat):
        assert 0 <= box[0] and box[2] <= width and box[3] <= height, (text, box)
        for other, obox in flat[i + 1 :]:
            assert not overlap(box, obox), (text, other)
    turned = [el for el in root.iter() if _tag(el) == "text" and "transform" in el.attrib]
    if turned:  # parallel labels: their baselines are further apart than a line of text is high
        xs = [float(el.attrib["x"]) for el in turned]
        size = float(turned[0].attrib["font-size"])
        assert min(b - a for a, b in zip(xs, xs[1:], strict=False)) * math.sin(math.radians(35)) > 1.2 * size
        for el in turned:  # each label stays inside the chart: its far end down and to the left
            w = len(el.text or "") * size * CHAR_EM
            x, y = float(el.attrib["x"]), float(el.attrib["y"])
            assert x - w * math.cos(math.radians(35)) >= 0 and y + w * math.sin(math.radians(35)) <= height
