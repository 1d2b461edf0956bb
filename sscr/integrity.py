"""The registry's record of a model's files: the sha256 of every artifact file, checked before anything is loaded.

The logged model is an MLflow "model from code": loading it imports the stored
``pyfunc_model.py``, so whoever can write to the artifact store can run code on every
host that loads ``models:/sscr@champion``. The registry (the tracking database) is a
separate place with its own permissions: at registration :func:`record` stores the
sha256 of each file of the version's model directory as a JSON tag on the version
(:data:`DIGEST_TAG`), and :func:`fetch_verified` downloads a version, compares every
file with that record, and returns the local copy only if all match; the caller then
loads that copy, never the store again. A changed, missing or added file is refused,
named. What this does not cover: someone who can write to the registry database can
change the record too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

DIGEST_TAG = "sscr.artifact_sha256"
"""Model-version tag: JSON ``{relative path: sha256}`` of the version's model files."""
DOWNLOADER_FILES = frozenset({"registered_model_meta"})
"""Written by MLflow's downloader into the local copy (the name and version it was asked for), not stored."""
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))/?$")


def _download(uri: str, directory: str | Path) -> Path:
    """MLflow's download of ``uri`` into ``directory``, without its progress bars (one line per file on stderr)."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    previous = os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
    os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"
    try:
        return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(directory)))
    finally:
        if previous is None:
            os.environ.pop(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, None)
        else:
            os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = previous


class IntegrityError(ValueError):
    """A registered model whose files differ from the registry's record; the message names them."""


def file_digests(directory: str | Path) -> dict[str, str]:
    """``{posix path relative to directory: sha256 hex}`` of every file below ``directory`` (sorted)."""
    root = Path(directory)
    digests = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative in DOWNLOADER_FILES:
            continue
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digests[relative] = digest.hexdigest()
    return digests


def registered_version(uri: str) -> tuple[str, str] | None:
    """(name, version number) of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``; None for other URIs.

    The alias is resolved once here, so a later move of the alias cannot swap the files
    between the check and the load.
    """
    match = _VERSION_URI.match(uri)
    if match is None:
        return None
    name = match["name"]
    client = MlflowClient()
    if match["alias"]:
        return name, str(client.get_model_version_by_alias(name, match["alias"]).version)
    version = match["version"]
    if not version.isdigit():  # a stage name ("Production") or "latest"
        found = client.get_latest_versions(name, None if version == "latest" else [version])
        if not found:
            raise IntegrityError(f"no version of registered model {name!r} in stage {version!r}")
        version = str(max(int(v.version) for v in found))
    return name, version


def record(model_name: str, version: str) -> dict[str, str]:
    """Hash the files of registered ``model_name`` ``version`` and store them as its :data:`DIGEST_TAG` tag."""
    with tempfile.TemporaryDirectory(prefix="sscr-record-") as directory:
        local = _download(f"models:/{model_name}/{version}", directory)
        digests = file_digests(local)
    MlflowClient().set_model_version_tag(model_name, str(version), DIGEST_TAG, json.dumps(digests, sort_keys=True))
    return digests


def expected(model_name: str, version: str) -> dict[str, str]:
    """The digests recorded on the version; IntegrityError when there are none."""
    tags = MlflowClient().get_model_version(model_name, version).tags
    if DIGEST_TAG not in tags:
        raise IntegrityError(
            f"registered model {model_name} version {version} has no {DIGEST_TAG} record of its files (registered "
            "before sscr recorded them, or not by `sscr register`): its stored code cannot be checked; register "
            f"its run again (`sscr register`), or record it if you trust the store: "
            f"python -c \"from sscr import tracking, integrity; tracking.configure(); "
            f"integrity.record('{model_name}', '{version}')\""
        )
    return json.loads(tags[DIGEST_TAG])


def verify(directory: str | Path, digests: dict[str, str], where: str) -> None:
    """Refuse ``directory`` unless its files are exactly those of ``digests``; the error names every difference."""
    found = file_digests(directory)
    changed = sorted(name for name in found.keys() & digests.keys() if found[name] != digests[name])
    missing = sorted(digests.keys() - found.keys())
    added = sorted(found.keys() - digests.keys())
    if changed or missing or added:
        parts = [f"{label} {', '.join(names)}" for label, names in
                 (("changed:", changed), ("missing:", missing), ("added:", added)) if names]
        raise IntegrityError(
            f"{where}: the stored model files differ from the sha256 recorded in the registry at registration "
            f"({'; '.join(parts)}); refusing to load them, since loading runs the stored code. Restore the files "
            "from a trusted copy or register a model you trust again"
        )


def fetch_verified(uri: str, directory: str | Path) -> Path:
    """Download registered model ``uri`` into ``directory`` and check it against the registry's record.

    Returns the local model directory, to be loaded instead of ``uri``. Raises
    :class:`IntegrityError` naming the files that differ, or ValueError for a URI that
    names no registered version.
    """
    resolved = registered_version(uri)
    if resolved is None:
        raise ValueError(f"{uri!r} is not a registered model URI (models:/NAME/VERSION or models:/NAME@ALIAS)")
    name, version = resolved
    digests = expected(name, version)
    local = _download(f"models:/{name}/{version}", directory)
    verify(local, digests, f"models:/{name}/{version} ({uri})")
    return local
