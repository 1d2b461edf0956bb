"""Stage ``download``: make the data set exist under ``data.root``, whatever its source."""

from __future__ import annotations

from pathlib import Path

from sscr.config import DataConfig


def prepare_dataset(cfg: DataConfig, progress: bool = True) -> Path:
    """Write the synthetic sample or download SEN12MS-CR into ``cfg.root``; returns the root.

    ``data.source: synthetic`` (the embedded default) writes a SEN12MS-CR-format
    sample offline; ``sen12mscr`` fetches the official archives. Both are
    idempotent: complete work is kept and skipped on a rerun.
    """
    if cfg.source == "synthetic":
        from sscr.data.synth import write_synthetic_sample

        write_synthetic_sample(cfg.root, cfg.synth, patch_size=cfg.patch_size, seasons=cfg.seasons,
                               progress=progress)
    else:
        from sscr.data.download import download_sen12mscr

        download_sen12mscr(cfg, progress=progress)
    return Path(cfg.root)
