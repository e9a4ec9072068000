"""The import rules of the layers, checked on the source (an AST walk; nothing is imported).

top floor     cli/: the command line, the demo, the embedded stack launcher, the polling client
api/          the HTTP service: never worker/, never torch, transformers or peft
  api.core      its plumbing: never api.services, api.routes, api.deps, api.schemas or api.main
  api.services  its product behaviour: never api.core, api.routes, api.deps or api.main
  api.fastpath  the poll path's fast lane: plugged in by api.main, imported by nothing else
worker/       stages, pipeline, runner, tasks ... over the ML packages
worker ML     worker.ml (bottom), worker.scoring, .training, .evaluation, .mitigation, .report:
              never a stage, the pipeline or the Celery layer; worker.ml imports no other worker package
models/       SQLAlchemy tables and the job state machine
ground floor  tunegate/: settings, errors, conversation, storage, artifacts, queue,
              shipped data ... importable by everyone, importing none of the above
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("cli",)
ML = (
    "worker.ml",
    "worker.scoring",
    "worker.training",
    "worker.evaluation",
    "worker.mitigation",
    "worker.report",
)
HEAVY = ("torch", "transformers", "peft")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _modules(*packages: str) -> dict[str, set[str]]:
    found = {}
    for pkg in packages:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[_module(path)] = _imports(path)
    return found


ALL = _modules("api", "worker", "models", "tunegate", "migrations", "cli")


def _violations(who: tuple[str, ...], banned: tuple[str, ...], exempt: tuple[str, ...] = ()) -> list[str]:
    return sorted(
        f"{mod} imports {imp}"
        for mod, imps in ALL.items()
        if _under(mod, who) and not _under(mod, exempt)
        for imp in imps
        if _under(imp, banned) and not _under(imp, (mod,))
    )


def _ground() -> tuple[str, ...]:
    return ("tunegate",)


@pytest.mark.parametrize(
    ("who", "banned", "exempt"),
    [
        (("api",), ("worker", *TOP, *HEAVY), ()),
        (("api.core",), ("api.services", "api.routes", "api.deps", "api.schemas", "api.main"), ()),
        (("api.services",), ("api.core", "api.routes", "api.deps", "api.main"), ()),
        # the poll path's fast lane sits in front of the routes: only the app factory plugs it in
        (("api",), ("api.fastpath",), ("api.main", "api.fastpath")),
        (("models",), ("api", "worker", *TOP), ()),
        (_ground(), ("api", "worker", "models", *TOP), ()),
        (
            ML,
            (
                "worker.stages",
                "worker.prepare",
                "worker.job_view",
                "worker.runner",
                "worker.tasks",
                "worker.claims",
                "worker.events",
                "worker.reaper",
                "worker.celery_app",
                "api",
                *TOP,
            ),
            (),
        ),
        (("worker.ml",), ("worker",), ("worker.ml",)),
    ],
    ids=[
        "api",
        "api-core",
        "api-services",
        "api-fastpath",
        "models",
        "ground-floor",
        "worker-ml-packages",
        "worker-ml-bottom",
    ],
)
def test_layer_imports(who: tuple[str, ...], banned: tuple[str, ...], exempt: tuple[str, ...]) -> None:
    if who == ("worker.ml",):  # worker.ml may import itself, nothing else of worker/
        bad = [v for v in _violations(who, banned) if not v.split(" imports ")[1].startswith("worker.ml")]
    else:
        bad = _violations(who, banned, exempt)
    assert bad == []


def test_the_walk_sees_the_tree() -> None:
    assert {"api.main", "worker.runner", "worker.ml.precision", "tunegate.settings"} <= set(ALL)
    assert {"api.core.auth", "api.services.crud", "api.routes.jobs"} <= set(ALL)
    assert "worker.ml.stage_io" in _imports(ROOT / "worker" / "training" / "loop.py")


# Modules where a stage's name is a string for another reason (the word, not the stage).
OTHER_MEANINGS = {
    ("score", "cli/scoring.py"): "the `tunegate score` command",
    ("score", "worker/evaluation/records.py"): "an LLM judge's harm score",
    ("repair", "worker/stages/train.py"): "the train stage's post-training repair knob (TrainConfig.repair)",
    ("repair", "worker/training/repair_io.py"): "that knob's parameter name in its errors",
    ("repair", "api/services/crud.py"): "the job's repair column (Job.repair), read for the job object",
    ("repair", "worker/report/build.py"): "the report's repair section",
    ("repair", "tunegate/reporting/view.py"): "the report's repair section",
    ("repair", "tunegate/report.py"): "the report's repair section",
}


def _strings(path: Path) -> set[str]:
    """The string literals of a module (comments are not looked at)."""
    import io
    import tokenize

    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    return {t.string.strip("\"'") for t in tokens if t.type == tokenize.STRING}


def test_each_stage_is_named_in_its_own_module_only() -> None:
    """A stage's name, as a string, appears in no product module but its own (the pipeline, tasks, queues and
    progress all come from its ``StageSpec``); tests and benchmarks may name it."""
    from worker.stages.all import PIPELINE

    strings = {
        str(path.relative_to(ROOT)): _strings(path)
        for pkg in ("api", "worker", "models", "tunegate", "cli")
        for path in (ROOT / pkg).rglob("*.py")
    }
    for name in PIPELINE.names:
        owners = sorted(
            m for m, found in strings.items() if name in found and (name, m) not in OTHER_MEANINGS
        )
        assert owners == [f"worker/stages/{name}.py"], (name, owners)


# Private names imported on purpose, each with its reason.
PRIVATE_KEPT = {
    "psycopg.errors._WaitTimeout": "raised when psycopg's wait() times out; no public class (models/db.py)",
}


def test_no_module_imports_a_private_module_of_a_library() -> None:
    """Only a library's public API (issue 30: ``typer._click`` was imported by the CLI twice)."""
    own = ("api", "worker", "models", "tunegate", "migrations", "cli")
    bad = sorted(
        f"{mod} imports {imp}"
        for mod, imps in ALL.items()
        for imp in imps
        if not _under(imp, own)
        and imp not in PRIVATE_KEPT
        and any(part.startswith("_") and not part.startswith("__") for part in imp.split("."))
    )
    assert bad == []
