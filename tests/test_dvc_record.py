"""DVC is the record: each stage depends on every project file its command imports, and a code edit re-runs them.

The import closure is read from the source (``tests/import_graph.py``): the
``sscr`` command's module-level imports plus the imports of the stage's handler,
then everything those import, anywhere in their source.
"""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path

import yaml
from test_pipeline import dvc, make_clone

from sscr.cli import build_parser

from import_graph import ROOT, _imported, import_graph, module_files
from tiny import TINY

STAGES = ("download", "cloudmasks", "train", "evaluate", "register")


def command_roots(handler: str) -> set[str]:
    """Project modules ``sscr/cli.py`` imports for one handler: its own imports and those outside every handler."""
    modules = module_files()
    roots: set[str] = set()
    for node in ast.parse((ROOT / "sscr/cli.py").read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("cmd_") and node.name != handler:
            continue  # another command's lazy imports
        for statement in ast.walk(node):
            if isinstance(statement, ast.Import | ast.ImportFrom):
                roots |= _imported(statement, "sscr.cli", modules)
    return roots


def import_closure(command: str) -> set[str]:
    """Project source files (relative paths) that ``command`` (``sscr ...``) imports, directly or not."""
    handler = build_parser().parse_args(shlex.split(command)[1:]).handler.__name__
    graph, modules = import_graph(), module_files()
    seen: set[str] = set()
    todo = list(command_roots(handler))
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:depth]) for depth in range(1, len(parts))]  # a package's __init__ runs first
        todo += graph.get(module, ())
    return {str(modules[m].relative_to(ROOT)) for m in seen} | {"sscr/cli.py"}


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def test_every_stage_depends_on_its_import_closure():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(STAGES) <= set(stages)
    for name in STAGES:
        closure = import_closure(stages[name]["cmd"])
        assert "sscr/cli.py" in closure and len(closure) > 5
        missing = sorted(path for path in closure if not covered(path, stages[name]["deps"]))
        assert not missing, f"dvc.yaml stage {name!r} ({stages[name]['cmd']}) misses deps {missing}"


def test_import_closure_follows_the_handler():
    assert "sscr/data/io.py" in import_closure("sscr train")  # through dataset -> io
    assert "sscr/train.py" not in import_closure("sscr evaluate")
    assert "sscr/registry.py" in import_closure("sscr register")
    assert "sscr/models/__init__.py" not in import_closure("sscr data download")


def _placeholders(clone: Path) -> None:
    """Stand-ins for every stage output, so that ``dvc commit`` can record a lock without running the stages."""
    from dvc.repo import Repo

    with Repo(str(clone)) as repo:
        outs = [Path(out.fs_path) for stage in repo.index.stages for out in stage.outs]
    for path in outs:
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}\n" if path.suffix == ".json" else "placeholder\n")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "placeholder.txt").write_text("placeholder\n")


def test_editing_the_normalisation_marks_train_and_evaluate_changed(tmp_path):
    clone = make_clone(tmp_path / "clone", TINY)
    _placeholders(clone)
    dvc(clone, "commit", "--force")
    assert json.loads(dvc(clone, "status", "--json").stdout) == {}

    with (clone / "sscr/data/io.py").open("a") as handle:
        handle.write("\n# a change to the normalisation module\n")
    status = json.loads(dvc(clone, "status", "--json").stdout)
    changed = {stage for stage, entries in status.items() for entry in entries
               if covered("sscr/data/io.py", list(entry.get("changed deps", {})))}  # the file or its folder
    assert {"train", "evaluate"} <= changed, status
    assert "register" not in status, status  # register reads records, not the data code


def test_mlflow_run_names_say_what_ran(monkeypatch):
    from sscr.config import parse_params
    from sscr.train import run_label

    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("SSCR_FLOW_RUN", raising=False)
    params = parse_params({"model": {"name": "unet", "use_sar": False}, "loss": {"name": "l2"}})
    assert run_label(params) == "unet-l2-nosar"
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-kohl")
    monkeypatch.setenv("SSCR_FLOW_RUN", "pipeline-olive-otter")
    assert run_label(params, "trial-3") == "trial-3-unet-l2-nosar-bushy-kohl-pipeline-olive-otter"
