"""The panel runner keeps one base model's rows together: rows of another base are refused or removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.panel.job import write_row
from benchmarks.panel.manifest import by_name
from benchmarks.panel.records import RunInfo
from benchmarks.panel.run import StaleRows, check_base, pending, run_record
from tests.benchmarks.panel.rows import machine, row, summary


def _panel(out: Path, base: str | None) -> None:
    out.mkdir(parents=True)
    run = {"model": "m"} | ({"base": base} if base else {})
    (out / "panel-run.json").write_text(json.dumps(run))
    write_row(out, "a1_compliance", "off", row(summary(job="a1_compliance", arm="off"), base=base))
    (out / "_attacker").mkdir()
    (out / "a1_compliance" / "data").mkdir()


@pytest.mark.parametrize("recorded", ["old", None])
def test_rows_of_another_or_an_unrecorded_base_are_refused_then_removed_on_restart(
    tmp_path: Path, recorded: str | None
) -> None:
    out = tmp_path / "panel"
    _panel(out, recorded)
    with pytest.raises(StaleRows, match=r"1 rows measured on base .*--restart"):
        check_base(out, "new", restart=False)
    assert (out / "a1_compliance" / "off" / "panel.json").is_file()  # nothing removed without --restart
    check_base(out, "new", restart=True)
    assert not (out / "a1_compliance").exists() and not (out / "_attacker").exists()
    assert pending(by_name(["a1_compliance"]), ["off"], out)  # the arm runs again


def test_rows_of_the_same_base_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "panel"
    _panel(out, "same")
    check_base(out, "same", restart=True)
    assert not pending(by_name(["a1_compliance"]), ["off"], out)
    check_base(tmp_path / "empty", "any", restart=False)  # no rows: nothing to check


def test_rows_of_an_earlier_base_named_by_also_base_are_kept_and_its_run_recorded(tmp_path: Path) -> None:
    out = tmp_path / "panel"
    _panel(out, "old")
    old = RunInfo(model="m", base="old", pool_size=10, machine=machine("A"), started=1.0)
    (out / "panel-run.json").write_text(json.dumps(old.to_dict()))
    with pytest.raises(StaleRows, match="--also-base"):
        check_base(out, "new", restart=False, also=("older",))
    check_base(out, "new", restart=False, also=("old",))
    write_row(out, "a2_persona", "off", row(summary(job="a2_persona", arm="off"), base="new"))
    info = RunInfo(model="m", base="new", pool_size=10, machine=machine("B"), started=2.0)
    record = run_record(out, info)
    assert record.info() == info and record.earlier_runs == (old,)
    (out / "panel-run.json").write_text(json.dumps(record.to_dict()))
    assert run_record(out, info).earlier_runs == (old,)  # a rerun keeps it once
    (out / "a1_compliance" / "off" / "panel.json").unlink()  # no row of the old base left: forgotten
    assert run_record(out, info).earlier_runs == ()
