"""Prefect flow ``promote``: move the registry alias (``@champion``) to the newest version if it is better.

The decision is :func:`sscr.registry.promote`'s, the same code the
``register`` stage and ``sscr promote`` call: higher ``registry.metric`` wins,
under a lock, recorded as tags on the version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.pipeline import mlflow_store
from sscr import registry as model_registry
from sscr.config import load_params


@task(cache_policy=NO_CACHE)
def promote_version(project: Path, version: str | None) -> dict[str, Any]:
    """Compare ``version`` (default: the newest) with the alias holder and move the alias if it is better."""
    registry = load_params(project / "params.yaml").registry
    with mlflow_store(project):
        version = version or model_registry.newest_version(registry.model_name)
        decision = model_registry.promote(registry.model_name, version, registry.alias, registry.metric)
    return decision.as_dict()


@task(cache_policy=NO_CACHE)
def publish_decision(decision: dict[str, Any], alias: str) -> None:
    """A markdown artifact with the decision."""
    verb = "promoted to" if decision["promoted"] else "not promoted to"
    champion = decision["champion_version"] or "none"
    create_markdown_artifact("\n".join([
        f"### {decision['model_name']} v{decision['version']} {verb} @{alias}",
        "",
        f"- {decision['metric']}: {decision['candidate_score']:.4f} (champion before: v{champion}, "
        f"{decision['champion_score'] if decision['champion_score'] is not None else '-'})",
        f"- reason: {decision['reason']}",
    ]), key="sscr-promotion", description="Registry promotion decision")


@flow(name="promote", log_prints=True)
def promote(project_dir: str = ".", version: str | None = None) -> dict[str, Any]:
    """Promote ``version`` (default: the newest registered) of ``registry.model_name`` if it beats the champion."""
    project = Path(project_dir).resolve()
    decision = promote_version(project, version)
    publish_decision(decision, load_params(project / "params.yaml").registry.alias)
    print(f"{decision['model_name']} v{decision['version']}: {decision['reason']}")
    return decision
