"""The shape of the house: imports run one way, one helper per pattern, one source per constant.

Read from the source with ``ast`` (``tests/import_graph.py``); nothing here
imports the library, so a violation is reported as the edge or line that
breaks the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

from import_graph import ROOT, find_cycle, folder_graph, import_graph, module_files, node_of

#: Folders that are one node of the folder graph and of the layer order (their inside is free).
NODES = ("sscr.data", "sscr.clouds", "sscr.models", "flows")

#: The layer of every node: a module imports only nodes of strictly lower layers (or its own folder).
#: A caller sits above what it calls, so the MLflow run logger (``tracking``) sits under the stages that
#: log to it, and the logged model (``serving``) under ``train``, which logs it.
LAYERS: dict[str, int] = {
    # facts: no project imports
    "sscr": 0, "sscr.bands": 0, "sscr.layout": 0, "sscr.faults": 0,
    # foundation: the params schema and the one atomic write
    "sscr.config": 1, "sscr.fsutil": 1, "sscr.process": 1, "sscr.stores": 1,
    # algorithms and services that need only the foundation
    "sscr.clouds": 2, "sscr.plots": 2, "sscr.tracking": 2, "sscr.integrity": 2, "sscr.evidence": 2,
    # the data set: files, index, reader, mask files, builder
    "sscr.data": 3,
    # what a stage computes with
    "sscr.models": 4, "sscr.metrics": 4, "sscr.quality": 4,
    "sscr.losses": 5, "sscr.checkpoint": 5, "sscr.predict": 5, "sscr.registry": 5, "sscr.validation": 5,
    # the logged MLflow model and its loader
    "sscr.serving": 6,
    # a run directory's records (conf.json, run.json) and their MLflow run, written alike by train and import
    "sscr.rundir": 7,
    # stages: none imports another
    "sscr.cloudmasks": 8, "sscr.train": 8, "sscr.evaluate": 8, "sscr.infer": 8, "sscr.ensemble": 8,
    "sscr.published": 8,
    # on top: Optuna over training, the command line, MLflow's model-from-code entry, Prefect
    "sscr.tune": 9,
    "sscr.cli": 10, "sscr.pyfunc_model": 10, "sscr.serving_app": 10,
    "flows": 11,
}

#: Band facts that have one home, ``sscr/bands.py``.
BAND_CONSTANTS = {"S1_BANDS", "S2_BANDS", "S1_CHANNELS", "S2_CHANNELS", "RGB_BANDS", "S2_DN_MAX", "S1_DB_RANGE"}
S2_BAND_COUNT = 13


def _library_files(*folders: str) -> dict[str, Path]:
    return {str(path.relative_to(ROOT)): path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))}


def _trees(*folders: str) -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text(), name) for name, path in _library_files(*folders).items()}


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_import_cycle_between_folders():
    cycle = find_cycle(folder_graph(import_graph(), NODES))
    assert cycle is None, f"import cycle between folders: {' -> '.join(cycle)}"


def test_imports_only_go_down():
    nodes = {node_of(module, NODES) for module in module_files()}
    assert not nodes - set(LAYERS), f"declare the layer of {sorted(nodes - set(LAYERS))} in LAYERS"
    upward = []
    for module, imports in import_graph().items():
        source = node_of(module, NODES)
        for name in imports:
            target = node_of(name, NODES)
            if target != source and LAYERS.get(target, 99) >= LAYERS.get(source, -1):
                upward.append(f"{module} (layer {LAYERS.get(source)}) imports {name} (layer {LAYERS.get(target)})")
    assert not upward, "imports that do not go down:\n" + "\n".join(sorted(upward))


def _renames(tree: ast.Module) -> list[int]:
    """Lines that rename or move a file: os.replace/rename, shutil.move, Path.replace/rename(target)."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        name = node.func.attr
        if (owner, name) in {("os", "replace"), ("os", "rename"), ("shutil", "move")}:
            lines.append(node.lineno)
        elif name in {"replace", "rename"} and len(node.args) == 1 and not node.keywords:
            lines.append(node.lineno)  # str.replace takes two arguments; Path.replace one
    return lines


def test_atomic_writes_go_through_the_one_helper():
    found = []
    for name, tree in _trees("sscr", "flows", "benchmarks").items():
        if name == "sscr/fsutil.py":
            continue
        found += [f"{name}:{line}: renames a file" for line in _renames(tree)]
        found += [f"{name}:{node.lineno}: a hand-made temporary name {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and ".partial" in node.value]
    assert not found, "write through sscr.fsutil.atomic_path instead:\n" + "\n".join(found)


def test_band_constants_have_one_home():
    defined = []
    for name, tree in _trees("sscr").items():
        if name == "sscr/bands.py":
            continue
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AnnAssign) else []
            for target in targets:
                # A class constant naming the imported value (``S2_BANDS = S2_BANDS``) is an alias, not a source.
                if isinstance(target, ast.Name) and target.id in BAND_CONSTANTS and not isinstance(node.value, ast.Name):
                    defined.append(f"{name}:{node.lineno}: {target.id}")
    assert not defined, "band constants defined outside sscr/bands.py:\n" + "\n".join(defined)


def test_no_bare_s2_band_count():
    bare = []
    for name, tree in _trees("sscr").items():
        if name == "sscr/bands.py":
            continue
        bare += [f"{name}:{node.lineno}" for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and type(node.value) is int and node.value == S2_BAND_COUNT]
    assert not bare, "a bare 13 where sscr.bands.S2_CHANNELS is meant:\n" + "\n".join(bare)
