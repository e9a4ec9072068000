"""The one progress bar of every long command (scoring, evaluation, alignment, fine-tuning, ``follow``).

    with Progress("scoring") as bar:
        score_examples(..., progress=bar)        # bar(fraction, message) or bar(fraction, message, metrics)

A ``Progress`` is itself the callback the stages take (``StageIO.progress``, the scorers' ``progress``), so
commands pass it straight through. The bar, its elapsed time and its ETA are tqdm's; the ETA is tqdm's average
rate counted from the first report (not from the bar's start: time spent before it, such as loading a model,
or work done before it, a job followed halfway, would skew it). Steps can be minutes apart on a CPU (a
training step of the aligned base), so while the bar is open on a terminal a background thread redraws it
every second: the elapsed time keeps moving and the ETA stays current between reports.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypedDict

from tqdm import tqdm

TICKS = 1000  # the bar's resolution: fractions are shown to 0.1 %


class _Text:
    """The bar's right-hand text as tqdm's ``postfix``: not a str, so tqdm does not prefix it with ", "."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __format__(self, spec: str) -> str:
        return self.text


class _Format(TypedDict, total=False):
    """tqdm's ``format_dict``: the arguments of its ``format_meter`` (a disabled bar has a few of them)."""

    n: float
    total: float | None
    elapsed: float
    ncols: int | None
    nrows: int | None
    prefix: str | None
    ascii: str | bool | None
    unit: str
    unit_scale: bool | float
    rate: float | None
    bar_format: str | None
    postfix: str | _Text | None
    unit_divisor: float
    initial: float
    colour: str | None


class _Bar(tqdm):  # type: ignore[misc]  # tqdm ships no types
    """tqdm whose average rate (so its ETA) counts from the first report (``since``): tqdm's own counts from
    the bar's start, which is also where its elapsed time counts from, as it should."""

    since: tuple[float, int] | None = None  # (time, n) of the first report

    @property
    def format_dict(self) -> _Format:
        shown: _Format = super().format_dict
        if self.since is not None:
            t1, n1 = self.since
            done, took = self.n - n1, self._clock() - t1
            shown["rate"] = done / took if done > 0 and took > 0 else None
            shown["initial"] = n1  # no rate yet: tqdm's fallback, (n - initial) / elapsed, says 0: no ETA
        return shown

    def _clock(self) -> float:
        """tqdm's own clock; a disabled bar (``--quiet``, no terminal) is left without one."""
        clock = getattr(self, "_time", time.time)
        return float(clock())

    def move_to(self, n: int) -> None:
        """Set the count (the first call starts the rate's clock); the caller refreshes."""
        self.n = n
        if self.since is None:
            self.since = (self._clock(), n)


class Progress:
    """A labelled bar from 0 to 1 with the last message, a loss when reported, elapsed time and an ETA."""

    def __init__(self, label: str, *, enabled: bool = True, position: int = 0, tick_s: float = 1.0) -> None:
        self.label = label
        self._bar = _Bar(
            total=TICKS,
            desc=label,
            disable=not enabled,
            position=position,
            bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}",
            file=sys.stderr,
        )
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._ticker: threading.Thread | None = None
        if enabled and tick_s > 0 and sys.stderr.isatty():
            # ours: tqdm redraws only when the count moves, so between reports minutes apart it would freeze
            self._ticker = threading.Thread(target=self._tick, args=(tick_s,), daemon=True)
            self._ticker.start()

    def __call__(
        self, fraction: float, message: str = "", metrics: Mapping[str, float | str] | None = None
    ) -> None:
        """Report ``fraction`` (0..1) done; the signature of both ``StageIO.progress`` and the scorers'."""
        loss = (metrics or {}).get("train_loss")
        with self._lock:
            self._bar.move_to(int(TICKS * max(0.0, min(1.0, fraction))))
            self._bar.postfix = _Text(message[:60] + (f" loss={loss:.3f}" if isinstance(loss, float) else ""))
            self._bar.refresh()

    def describe(self, label: str) -> None:
        """Change the label (``follow`` shows the job's status and stage there)."""
        with self._lock:
            self._bar.set_description_str(label, refresh=True)

    def write(self, line: str) -> None:
        """Print a line above the bar without breaking it."""
        self._bar.write(line, file=sys.stderr)

    def _tick(self, every: float) -> None:
        while not self._closed.wait(every):
            with self._lock:
                self._bar.refresh()

    def close(self) -> None:
        self._closed.set()
        if self._ticker is not None:
            self._ticker.join()
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ReadProgress(io.RawIOBase):
    """A binary file whose reads move a byte-counting bar: handed to the SDK as the upload's body (the HTTP
    client reads it in chunks, and seeks back to its start when it retries)."""

    def __init__(
        self, raw: io.BufferedIOBase | io.RawIOBase, total: int, label: str, *, enabled: bool
    ) -> None:
        super().__init__()
        self._raw = raw
        self._bar = tqdm(
            total=total,
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not enabled,
            file=sys.stderr,
        )

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(-1 if size is None else size) or b""
        self._bar.update(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        position = self._raw.seek(offset, whence)
        self._bar.n = position
        self._bar.refresh()
        return position

    def tell(self) -> int:
        return self._raw.tell()

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._bar.close()
        super().close()
