"""What tenants may see of server-written text: no server paths, storage keys or operator commands.

Worker messages, job errors, event data, the safety report and the released adapter's files all pass
through ``scrub`` (or ``scrub_value``) before a tenant reads them; the details stay in the operators' logs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tunegate.settings import Settings

SERVER_PATH = "<server path>"
STORED_FILE = "<stored file>"
# Keys of event data / reports that only ever hold server-side locations or worker identities.
PRIVATE_KEYS = frozenset(
    {
        "worker",
        "claimed_by",
        "host",
        "hostname",
        "pid",
        "report_path",
        "report_json",
        "report_html",
        "adapter_path",
        "adapter_dir",
        "artifacts_dir",
        "path",
        "out_dir",
        "base_model_path",
        "stored_report",  # the gate's published references (store keys or paths)
        "stored_adapter",
    }
)
_STORAGE_KEY = re.compile(r"\b(?:[0-9a-f]{2}/[0-9a-f]{2}/)?[0-9a-f]{64}\b")
_OPERATOR_COMMAND = re.compile(r"\(?\brun\s+`?tunegate\s[^`)\n]*`?\)?|`tunegate\s[^`\n]*`")
_PATH_TAIL = r"[^\s'\"`),;]*"


def _roots(settings: Settings) -> list[str]:
    paths = {
        settings.home_dir,
        settings.files_path,
        settings.jobs_path,
        settings.models_path,
        settings.eval_cache_path,
    }
    paths |= {Path(src).expanduser() for src in settings.models.values() if src.startswith(("/", "~"))}
    roots = {str(p) for p in paths} | {str(p.resolve()) for p in paths}
    return sorted((r for r in roots if r not in ("", "/")), key=len, reverse=True)


_ROOTS: list[tuple[Settings, re.Pattern[str] | None]] = []  # the last settings seen and their pattern


def _server_paths(settings: Settings) -> re.Pattern[str] | None:
    """One pattern for every server root (longest first) and what follows it, built once per settings
    object: resolving the roots touches the file system, far too slow for every string of every event."""
    if _ROOTS and _ROOTS[0][0] is settings:
        return _ROOTS[0][1]
    roots = _roots(settings)
    pattern = re.compile("(?:" + "|".join(map(re.escape, roots)) + ")" + _PATH_TAIL) if roots else None
    _ROOTS[:] = [(settings, pattern)]
    return pattern


def scrub(text: str, settings: Settings, *, replacements: dict[str, str] | None = None) -> str:
    """``text`` with server paths, storage keys and operator commands replaced by neutral words.

    ``replacements`` first swaps known strings (e.g. a base model's directory -> its public name).
    """
    for old, new in (replacements or {}).items():
        if old:
            text = text.replace(old, new)
    # Each pattern is tried only where it can match (every event message of every poll passes here): a
    # root is an absolute path, a storage key 64 hex digits, an operator command names `tunegate`.
    server_paths = _server_paths(settings)
    if server_paths is not None and "/" in text:
        text = server_paths.sub(SERVER_PATH, text)
    if len(text) >= 64:
        text = _STORAGE_KEY.sub(STORED_FILE, text)
    if "tunegate" in text:
        text = _OPERATOR_COMMAND.sub("(the service operator has to prepare it)", text)
    return text


_SCALARS = (int, float, bool, type(None))


def scrub_value(value: Any, settings: Settings, *, drop_private: bool = True) -> Any:
    """``scrub`` every string inside JSON-like ``value``; drops ``PRIVATE_KEYS`` from objects (unless
    ``drop_private`` is false: a record read back into its type, whose page never shows them)."""
    if type(value) in _SCALARS:  # most leaves of event data (step, loss, progress)
        return value
    if isinstance(value, str):
        return scrub(value, settings)
    if isinstance(value, dict):
        return {
            k: scrub_value(v, settings, drop_private=drop_private)
            for k, v in value.items()
            if not (drop_private and k in PRIVATE_KEYS)
        }
    if isinstance(value, list | tuple):
        return [scrub_value(v, settings, drop_private=drop_private) for v in value]
    return value
