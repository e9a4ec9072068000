"""The one progress bar of every long command (scoring, evaluation, alignment, fine-tuning, ``follow``).

    with Progress("scoring") as bar:
        score_examples(..., progress=bar)        # bar(fraction, message) or bar(fraction, message, metrics)

A ``Progress`` is itself the callback the stages take (``StageIO.progress``, the scorers' ``progress``), so
commands pass it straight through. Steps can be minutes apart on a CPU (a training step of the aligned base),
so while the bar is open on a terminal a background thread redraws it every second: the elapsed time keeps
moving and the ETA (from the average rate since the first report) stays current between reports.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from types import TracebackType
from typing import Any

from tqdm import tqdm

TICKS = 1000  # the bar's resolution: fractions are shown to 0.1 %


class _Text:
    """The bar's right-hand text as tqdm's ``postfix``: not a str, so tqdm does not prefix it with ", "."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __format__(self, spec: str) -> str:
        return self.text


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """A labelled bar from 0 to 1 with the last message, a loss when reported, elapsed time and an ETA."""

    def __init__(self, label: str, *, enabled: bool = True, position: int = 0, tick_s: float = 1.0) -> None:
        self.label = label
        self._bar = tqdm(
            total=TICKS,
            desc=label,
            disable=not enabled,
            position=position,
            bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix}",
            file=sys.stderr,
        )
        self._t0 = time.monotonic()
        self._first: tuple[float, float] | None = None  # (time, fraction) of the first report
        self._fraction = 0.0
        self._message = ""
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._ticker: threading.Thread | None = None
        if enabled and tick_s > 0 and sys.stderr.isatty():
            self._ticker = threading.Thread(target=self._tick, args=(tick_s,), daemon=True)
            self._ticker.start()

    def __call__(self, fraction: float, message: str = "", metrics: dict[str, Any] | None = None) -> None:
        """Report ``fraction`` (0..1) done; the signature of both ``StageIO.progress`` and the scorers'."""
        loss = (metrics or {}).get("train_loss")
        with self._lock:
            now = time.monotonic()
            if self._first is None:
                self._first = (now, fraction)
            self._fraction = max(0.0, min(1.0, fraction))
            self._message = message[:60] + (f" loss={loss:.3f}" if isinstance(loss, float) else "")
            self._draw(now)

    def describe(self, label: str) -> None:
        """Change the label (``follow`` shows the job's status and stage there)."""
        with self._lock:
            self._bar.set_description_str(label, refresh=True)

    def write(self, line: str) -> None:
        """Print a line above the bar without breaking it."""
        self._bar.write(line, file=sys.stderr)

    def eta(self, now: float) -> float | None:
        """Seconds left at the average rate since the first report; None until there is a rate."""
        if self._first is None:
            return None
        t1, f1 = self._first
        done = self._fraction - f1
        if done <= 0 or now <= t1:
            return None
        return (now - t1) * (1.0 - self._fraction) / done

    def _draw(self, now: float) -> None:
        eta = self.eta(now)
        timing = f"[{_duration(now - self._t0)}" + (f"<{_duration(eta)}]" if eta is not None else "]")
        self._bar.n = int(TICKS * self._fraction)
        self._bar.postfix = _Text(f"{timing} {self._message}".rstrip())
        self._bar.refresh()

    def _tick(self, every: float) -> None:
        while not self._closed.wait(every):
            with self._lock:
                self._draw(time.monotonic())

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
