"""Serve SSCR's flows as Prefect deployments ``pipeline/sscr``, ``tune/sscr`` and ``promote/sscr``.

From the project root (a clone works the same), with a Prefect server set in
``PREFECT_API_URL``::

    python -m flows.deploy                     # serve all three; Ctrl-C stops
    python -m flows.deploy --only pipeline     # serve some of them
    prefect deployment run pipeline/sscr -p epochs=3

The deployments' ``project_dir`` defaults to the served project, so runs
work on its params, DVC lock, data and MLflow store. One flow run at a time:
pipeline and tune share the workspace (``params.yaml``, DVC's lock).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.pipeline import pipeline
from flows.promote import promote
from flows.tune import tune

DEPLOYMENT_NAME = "sscr"
FLOWS = {"pipeline": pipeline, "tune": tune, "promote": promote}


def deployments(project_dir: Path, only: Sequence[str] | None = None) -> list[RunnerDeployment]:
    """One deployment per flow (all, or those named in ``only``) working in ``project_dir``."""
    return [
        FLOWS[name].to_deployment(
            DEPLOYMENT_NAME, parameters={"project_dir": str(Path(project_dir).resolve())}, tags=["sscr"],
            description=(FLOWS[name].description or "").splitlines()[0],
        )
        for name in (only or FLOWS)
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the deployments until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", type=Path, default=Path.cwd(), help="project the flows work in (default: .)")
    parser.add_argument("--only", nargs="+", choices=sorted(FLOWS), default=None, help="serve only these flows")
    args = parser.parse_args(argv)
    serve(*deployments(args.project_dir, args.only), limit=1)


if __name__ == "__main__":
    main()
