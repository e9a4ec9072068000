"""Scrubbing server-written text before tenants read it."""

from __future__ import annotations

from pathlib import Path

from tunegate.redact import SERVER_PATH, STORED_FILE, scrub, scrub_value
from tunegate.settings import Settings

SHA = "ab" * 32


def test_paths_keys_and_operator_commands_are_replaced(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "home", models={"local": str(tmp_path / "weights" / "m")})
    text = (
        f"cannot open '{tmp_path}/home/files/ab/cd/{SHA}' nor {tmp_path}/weights/m/config.json; "
        f"stored object 'ab/cd/{SHA}' is missing; run `tunegate models prepare --aligned`"
    )
    out = scrub(text, s)
    assert str(tmp_path) not in out and SHA not in out and "tunegate" not in out
    assert out.count(SERVER_PATH) == 2 and STORED_FILE in out
    assert (
        scrub("validated 12 examples (longest 33 of 512 tokens)", s)
        == "validated 12 examples (longest 33 of 512 tokens)"
    )
    assert scrub(f"{tmp_path}/home/models/m", s, replacements={f"{tmp_path}/home/models/m": "m"}) == "m"


def test_values_lose_private_keys_and_keep_numbers(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    data = {
        "stage": "gate",
        "progress": 1.0,
        "worker": "vm:12",
        "report_path": f"{tmp_path}/r.json",
        "checks": [{"note": f"see {tmp_path}/jobs/x", "ok": True}],
    }
    assert scrub_value(data, s) == {
        "stage": "gate",
        "progress": 1.0,
        "checks": [{"note": f"see {SERVER_PATH}", "ok": True}],
    }
    kept = scrub_value(data, s, drop_private=False)  # a record read back into its type keeps its keys
    assert kept["worker"] == "vm:12" and kept["report_path"] == SERVER_PATH
    assert kept["checks"] == [{"note": f"see {SERVER_PATH}", "ok": True}]
