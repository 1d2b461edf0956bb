"""Serve SSCR's flows as Prefect deployments ``pipeline/sscr``, ``tune/sscr`` and ``promote/sscr``.

From the project root (a clone works the same), with a Prefect server set in
``PREFECT_API_URL``::

    python -m flows.deploy                     # serve all three; Ctrl-C stops
    python -m flows.deploy --only pipeline     # serve some of them
    prefect deployment run pipeline/sscr -p epochs=3

or, for a team, register them in a process work pool and let workers on the
machines that hold the project pick the runs up::

    python -m flows.deploy --work-pool sscr    # creates the pool if needed, then returns
    prefect worker start --pool sscr           # on each machine, from its clone

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


ENTRYPOINTS = {"pipeline": "flows/pipeline.py:pipeline", "tune": "flows/tune.py:tune", "promote": "flows/promote.py:promote"}


def deploy_to_pool(project_dir: Path, work_pool: str, only: Sequence[str] | None = None) -> list[str]:
    """Register the deployments in the process work pool ``work_pool`` (created if missing); their ids.

    The flow code is loaded from ``project_dir`` by the worker that picks a run up, which works in that
    directory (``working_dir``) with it on ``PYTHONPATH`` (the flows import ``flows.pipeline``).
    """
    from prefect import Flow, get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    project_dir = Path(project_dir).resolve()
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=work_pool, type="process"))
        except ObjectAlreadyExists:
            pass
    ids = []
    for name in only or FLOWS:
        remote = Flow.from_source(source=str(project_dir), entrypoint=ENTRYPOINTS[name])
        deployment = remote.to_deployment(
            DEPLOYMENT_NAME, work_pool_name=work_pool, parameters={"project_dir": str(project_dir)}, tags=["sscr"],
            description=(FLOWS[name].description or "").splitlines()[0],
            concurrency_limit=1,  # as served: one run at a time works on a project's params.yaml and DVC lock
            job_variables={"working_dir": str(project_dir), "env": {"PYTHONPATH": str(project_dir)}},
        )
        # `apply`, not `Flow.deploy`: prefect 3.8's deploy asks its server for the pool's workers with null
        # paging, which the server refused (HTTP 422) under FastAPI >= 0.151, now excluded in pyproject.toml.
        ids.append(str(deployment.apply()))
    return ids


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the deployments until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", type=Path, default=Path.cwd(), help="project the flows work in (default: .)")
    parser.add_argument("--only", nargs="+", choices=sorted(FLOWS), default=None, help="serve only these flows")
    parser.add_argument("--work-pool", default=None,
                        help="register the deployments in this process work pool (run by `prefect worker start "
                             "--pool NAME`) instead of serving them from this process")
    args = parser.parse_args(argv)
    if args.work_pool:
        deploy_to_pool(args.project_dir, args.work_pool, args.only)
        print(f"deployments registered in work pool {args.work_pool!r}; start a worker: "
              f"prefect worker start --pool {args.work_pool}")
        return
    serve(*deployments(args.project_dir, args.only), limit=1)


if __name__ == "__main__":
    main()
