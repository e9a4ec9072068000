"""Atomic artifact I/O: write to a temp file in the same directory, then rename.

A reader never sees a half-written artifact, and "the output exists" reliably means "the stage finished".
Stage configs are saved as sorted JSON beside their artifacts (``save_config``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from tunegate.jsontypes import JsonObject

CONFIG_NAME = "config.json"
T = TypeVar("T")


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte with ``os.write`` (a short write is continued; a full disk raises ENOSPC)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path``, fsync, rename. On any error (a full disk) the temp file
    is removed and ``path`` keeps its previous content, if any."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_default) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def publish_dir(tmp_dir: str | Path, final_dir: str | Path) -> Path:
    """Move a fully written temp directory into place, replacing an older one only once the new one is
    complete (the older one is renamed aside first, then removed)."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    old = final_dir.with_name(f".{final_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final_dir.exists():
        final_dir.replace(old)
    tmp_dir.replace(final_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final_dir


def save_config(cfg: object, directory: str | Path) -> Path:
    """Save a stage's frozen config dataclass as sorted JSON beside its artifacts."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"not a dataclass instance: {cfg!r}")
    payload = {"stage_config": type(cfg).__name__, **dataclasses.asdict(cfg)}
    return atomic_write_json(Path(directory) / CONFIG_NAME, payload)


def load_config(cls: type[T], directory: str | Path) -> T:
    """The stage config ``save_config`` wrote into ``directory``, typed again (a config of another class is
    refused, naming both)."""
    payload = read_json(Path(directory) / CONFIG_NAME)
    saved = payload.pop("stage_config", cls.__name__)
    if saved != cls.__name__:
        raise ValueError(f"{Path(directory) / CONFIG_NAME} holds a {saved}, not a {cls.__name__}")
    return typing.cast(T, from_jsonable(cls, payload))


def _default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def from_jsonable(cls: Any, data: Any) -> Any:
    """Rebuild a value of type ``cls`` from its JSON form (the inverse of ``dataclasses.asdict``): nested
    dataclasses, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]`` and ``X | None`` are followed; other types
    are taken as they are. Keys the dataclass does not have are refused (an artifact from another version). A
    dataclass with its own ``from_dict`` (a typed record, ``tunegate.report.GateCheck``) reads itself."""
    origin, args = typing.get_origin(cls), typing.get_args(cls)
    if data is None or cls is Any:
        return data
    if dataclasses.is_dataclass(cls) and isinstance(cls, type):
        reader = getattr(cls, "from_dict", None)
        return reader(data) if reader is not None else _dataclass_from(cls, data)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return from_jsonable(inner[0], data) if len(inner) == 1 else data
    if origin in (list, tuple) and args:
        items = [from_jsonable(args[0], x) for x in data]
        return tuple(items) if origin is tuple else items
    if origin is dict and len(args) == 2:
        return {k: from_jsonable(args[1], v) for k, v in data.items()}
    return data


def _dataclass_from(cls: type, data: JsonObject) -> object:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
    kwargs = {name: from_jsonable(hints[name], value) for name, value in data.items() if fields[name].init}
    return cls(**kwargs)
