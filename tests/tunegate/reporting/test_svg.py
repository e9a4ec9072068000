from tunegate.reporting.svg import grouped_bars, histogram


def test_histogram_counts_every_value_once():
    svg = histogram([0, 5, 5, 99, 100, 150], bins=10)
    assert svg.startswith("<svg") and svg.count("<rect") == 10
    assert "0-10: 3" in svg and "90-100: 3" in svg  # out-of-range values are clipped into the end bins


def test_grouped_bars_escape_and_legend():
    svg = grouped_bars(["a<b", "c"], {"base": [0.1, 0.2], "fine-tuned": [0.5, 1.0]})
    assert svg.count("<rect") == 4 + 2 and "a&lt;b" in svg and "fine-tuned c: 100.0%" in svg


def test_histogram_draws_threshold_marks_at_their_value():
    svg = histogram([1, 2, 3], marks=[(50.0, "act from risk 50"), (100.0, "max")], width=440)
    assert svg.count('stroke-dasharray="4 3"') == 2
    assert 'x1="230.0"' in svg and "act from risk 50" in svg  # 30 + 400 * 0.5
