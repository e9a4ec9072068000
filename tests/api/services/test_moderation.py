"""The console's and the endpoints' report reading (``api.services.moderation``): a stored report.json is read
through ``SafetyReport.from_dict``, an older one upgraded, and the queue's facts come from its attributes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from api.services import moderation
from tunegate.records import RecordError
from tunegate.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "data" / "gate"


def test_a_stored_report_is_read_typed_and_upgraded(tmp_path: Path) -> None:
    ref = tmp_path / "report.json"
    shutil.copy(DATA / "report.json", ref)
    report = moderation.read_report(str(ref), Settings(home=tmp_path))
    assert report.schema_version == 1 and report.decision.code == "safety_eval_failed"
    assert report.to_dict() == {**json.loads(ref.read_text()), "schema_version": 1}


def test_a_report_this_version_cannot_read_is_refused(tmp_path: Path) -> None:
    ref = tmp_path / "report.json"
    ref.write_text(json.dumps({"verdict": {"released": True}}))
    with pytest.raises(RecordError, match="unknown key 'verdict'"):
        moderation.read_report(str(ref), Settings(home=tmp_path))
