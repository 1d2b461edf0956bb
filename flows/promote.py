"""Prefect flow ``promote``: rule 1 on a registered version (default: the ``@challenger``), or a recorded override.

The decision is :func:`sscr.registry.promote`'s, the same code ``sscr promote`` and
the ``register`` stage call: ``@champion`` moves only when the version beats it
beyond noise on the validation split (paired per-image comparison, margin
``registry.min_gain``), else the version is ``@challenger``; ``force`` with a
``reason`` moves ``@champion`` regardless. Each decision is appended to the
version's history (tags ``promotion.<n>``), under a lock.
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
def promote_version(project: Path, version: str | None, force: bool = False, reason: str | None = None
                    ) -> dict[str, Any]:
    """Decide on ``version`` (default: the ``@challenger``, else the newest) against the ``@champion``."""
    registry = load_params(project / "params.yaml").registry
    if force and not (reason or "").strip():
        raise ValueError("force needs a reason: why rule 1 is overridden (it is recorded with the decision)")
    with mlflow_store(project):
        version = version or model_registry.default_candidate(registry.model_name, registry.challenger)
        decision = model_registry.promote(
            registry.model_name, version, registry.alias, registry.metric, challenger_alias=registry.challenger,
            min_gain=registry.min_gain, confidence=registry.confidence,
            action="promote flow (forced)" if force else "promote flow", force=reason if force else None)
    return decision.as_dict()


@task(cache_policy=NO_CACHE)
def publish_decision(decision: dict[str, Any], alias: str) -> None:
    """A markdown artifact with the decision and its evidence."""
    where = {"champion": f"@{alias}", "challenger": "@challenger"}.get(decision["outcome"], "unchanged")
    evidence = decision.get("evidence") or {}
    lines = [f"### {decision['model_name']} v{decision['version']}: {where}", "",
             f"- reason: {decision['reason']}",
             f"- champion before: v{decision['champion_version'] or '-'}",
             f"- rule: {decision['rule']}"]
    if evidence:
        lines.append(f"- evidence ({evidence['split']} split, {evidence['n_images']} images): mean "
                     f"{evidence['metric']} {evidence['candidate_mean']:.4f} vs {evidence['champion_mean']:.4f} dB, "
                     f"difference {evidence['mean_difference']:+.4f} dB, {evidence['confidence']:.0%} interval "
                     f"[{evidence['interval'][0]:+.4f}, {evidence['interval'][1]:+.4f}], margin "
                     f"{evidence['min_gain']} dB")
    create_markdown_artifact("\n".join(lines), key="sscr-promotion", description="Registry promotion decision")


@flow(name="promote", log_prints=True)
def promote(project_dir: str = ".", version: str | None = None, force: bool = False,
            reason: str | None = None) -> dict[str, Any]:
    """Rule 1 on ``version`` (default: the ``@challenger``) of ``registry.model_name``; ``force`` needs a ``reason``."""
    project = Path(project_dir).resolve()
    decision = promote_version(project, version, force, reason)
    publish_decision(decision, load_params(project / "params.yaml").registry.alias)
    print(f"{decision['model_name']} v{decision['version']}: {decision['outcome']} ({decision['reason']})")
    return decision
