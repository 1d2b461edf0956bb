"""Packages made absent in a child interpreter, as on a machine that lacks them (the lent GPU machine's image)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_IMAGE_LACKS = ("mlflow", "dvc", "s2cloudless", "optuna", "prefect")
"""Our dependencies that the lent GPU machine's image does not have (rasterio and pydantic travel there as wheels;
``benchmarks/gpu_check.py`` says how)."""


def without(modules: Iterable[str], folder: Path) -> dict[str, str]:
    """This environment for a child interpreter in which importing any of ``modules`` fails as if not installed.

    A ``sitecustomize.py`` written to ``folder`` (first on ``PYTHONPATH``, then the checkout) puts a finder
    in front of ``sys.meta_path`` that refuses them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        f"ABSENT = {sorted(set(modules))!r}\n"
        "class Absent(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.partition('.')[0] in ABSENT:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (absent in this test)', name=name)\n"
        "sys.meta_path.insert(0, Absent())\n"
    )
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}
