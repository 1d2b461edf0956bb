"""Typed configuration: one pydantic model per ``params.yaml`` group.

``params.yaml`` is the single source of every knob. Each stage reads only its
groups. Unknown keys and wrong types are refused with the key's dotted name,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sscr.layout import MODALITIES, SEASONS, season_name

MaskKind = Literal["s2cloudless_mask", "s2cloudless_map", "cloud_cloudshadow_mask", "s2cloudless_shadow_map"]
MASK_KINDS: tuple[str, ...] = ("s2cloudless_mask", "s2cloudless_map", "cloud_cloudshadow_mask", "s2cloudless_shadow_map")
DEFAULT_MASK_KIND: MaskKind = "s2cloudless_map"
"""The mask the models see unless ``masks.use`` says otherwise (and the one an old checkpoint was trained with)."""
DEFAULT_PARAMS = Path("params.yaml")
OFFICIAL_BASE_URL = "https://dataserv.ub.tum.de/s/m1554803/download?path=/&files="


class _Group(BaseModel):
    """Base of every group: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SynthConfig(_Group):
    """Size and content of the embedded synthetic SEN12MS-CR sample."""

    seed: int = 0
    rois: dict[Literal["train", "val", "test"], int] = Field(
        default_factory=lambda: {"train": 6, "val": 2, "test": 2}
    )
    patches_per_roi: int = Field(4, ge=1)
    snow: bool = True


class DataConfig(_Group):
    """Where the data set is and where it comes from (stage ``download``)."""

    source: Literal["synthetic", "sen12mscr"] = "synthetic"
    root: Path = Path("data/sen12mscr")
    seasons: list[str] = Field(default_factory=lambda: list(SEASONS))
    modalities: list[str] = Field(default_factory=lambda: list(MODALITIES))
    base_url: str = OFFICIAL_BASE_URL
    patch_size: int = Field(256, ge=16)
    on_error: Literal["raise", "skip"] = "raise"
    # exact: ROI keys as listed (leak-free); substring: the published loaders' match (6 test, 3 val ROIs in train)
    split_match: Literal["exact", "substring"] = "exact"
    synth: SynthConfig = Field(default_factory=SynthConfig)

    @field_validator("seasons")
    @classmethod
    def _known_seasons(cls, seasons: list[str]) -> list[str]:
        return [season_name(s) for s in seasons]

    @field_validator("modalities")
    @classmethod
    def _known_modalities(cls, modalities: list[str]) -> list[str]:
        bad = [m for m in modalities if m not in MODALITIES]
        if bad:
            raise ValueError(f"unknown modalities {bad}; expected a subset of {list(MODALITIES)}")
        return modalities


class MasksConfig(_Group):
    """Cloud-mask precomputation (stage ``cloudmasks``) and the mask the models see."""

    dir: Path = Path("data/masks")
    kinds: list[MaskKind] = Field(default_factory=lambda: list(MASK_KINDS))
    use: MaskKind | None = DEFAULT_MASK_KIND
    workers: int = Field(2, ge=1)


MODEL_ALIASES: dict[str, str] = {"sscr": "multisarv2"}
"""Other names of a backbone: the paper calls its network SSCR, the seed's code ``multisarv2``."""
LossName = Literal["l1", "l2", "ml", "structure", "GNLL", "MGNLL"]
LOSS_NAMES: tuple[str, ...] = ("l1", "l2", "ml", "structure", "GNLL", "MGNLL")


class ModelConfig(_Group):
    """Backbone and its hyper-parameters; ``None`` means the backbone's own default.

    The backbones are built from these keys (minus ``name``, plus the variance the
    loss needs) as one :class:`sscr.models.BackboneConfig`. ``name`` is stored under
    its canonical spelling (``sscr`` -> ``multisarv2``). ``use_mask: null`` is the
    backbone's default: true for ``sscr_lite``, ``unet`` and ``utae``, false for the
    published ``uncrtaints`` and ``multisarv2``, which take no mask (``true`` is refused
    there). ``mask_beta`` is MultiSARv2's structure-mask gate (0 = published: no gating).
    """

    name: str = "multisarv2"
    use_sar: bool = True
    use_mask: bool | None = None
    scale_by: float = 10.0
    block_type: Literal["mbconv", "residual"] = "mbconv"
    n_head: int | None = None
    d_model: int | None = None
    encoder_widths: list[int] | None = None
    decoder_widths: list[int] | None = None
    mask_beta: float = Field(0.0, ge=0, le=1)

    @field_validator("name")
    @classmethod
    def _canonical_name(cls, name: str) -> str:
        return MODEL_ALIASES.get(name, name)


class LossConfig(_Group):
    """Training loss (see :mod:`sscr.losses`) and the weights of the ``structure`` mixed loss.

    ``var_floor``: GNLL and MGNLL clamp the variance, in the scaled units the
    published losses work in, at this value (published: 1e-8). ``w_*`` weigh the
    terms of ``structure`` only; ``ml`` has the published fixed weights.
    """

    name: LossName = "ml"
    covmode: Literal["iso", "diag"] = "diag"
    var_floor: float = Field(1e-8, gt=0)
    w_l1: float = Field(1.0, ge=0)
    w_grad: float = Field(0.5, ge=0)
    w_struct: float = Field(0.1, ge=0)
    w_ssim: float = Field(0.2, ge=0)


SelectBest = Literal["val_loss", "PSNR"]


class TrainConfig(_Group):
    """Optimisation and bookkeeping of a training run (stage ``train``).

    The defaults are the published protocol (:data:`PUBLISHED_PROTOCOL`); ``params.yaml``
    holds this project's CPU-sized choices. ``crop_size``: random crops of that size
    (None = whole patches); ``augment``: random horizontal and vertical flips.
    Validation runs after epoch ``e`` when ``e > val_after`` and ``e % val_every == 0``,
    and always after the last epoch (so a run always has a best checkpoint).
    ``select_best``: ``val_loss`` keeps the weights whose validation loss (the training
    loss on the val split) is lowest, a tie going to the later epoch, as published;
    ``PSNR`` those with the highest validation PSNR.

    ``schedule``: ``exponential`` multiplies the learning rate by ``gamma`` after every
    epoch (the published protocol); ``cosine`` changes it after every optimiser step, a
    linear warm-up over the first 5 % of the run's steps, then a cosine decay to 2 % of
    ``lr`` (``gamma`` unused). ``repeats``: random crops of every training patch per
    epoch (patches read once and kept in memory), so a small data set gives enough steps.
    """

    experiment_name: str = "sscr"
    metrics_dir: Path | None = None
    """Where a run's small records go (``run.json``, ``metrics.csv``, ...), under ``<metrics_dir>/<experiment_name>/``:
    the DVC pipeline keeps them in git (``metrics``); null = the run directory."""
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    gamma: float = Field(1.0, gt=0)
    schedule: Literal["exponential", "cosine"] = "exponential"
    repeats: int = Field(1, ge=1)
    val_every: int = Field(1, ge=1)
    val_after: int = Field(0, ge=0)
    select_best: SelectBest = "val_loss"
    rdm_seed: int = 1
    num_workers: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    res_dir: Path = Path("results")
    crop_size: int | None = Field(None, ge=16)
    augment: bool = False
    max_samples: int | None = Field(None, ge=1)
    min_cov: float = Field(0.0, ge=0, le=1)
    max_cov: float = Field(1.0, ge=0, le=1)
    pretrained: Path | None = None
    freeze: list[str] = Field(default_factory=list)
    amp: bool = True


PUBLISHED_PROTOCOL: dict[str, Any] = {
    "train.crop_size": None, "train.augment": False, "train.val_every": 1, "train.val_after": 0,
    "train.select_best": "val_loss", "train.min_cov": 0.0, "train.max_cov": 1.0, "train.max_samples": None,
    "train.amp": False,
}
"""How the seed's script trains with ``--pretrain`` (github.com/RSIR25/sscr ``train_reconstruct.py``),
beyond the flags its command line spells out: whole 256 px patches, no augmentation, validation
after every epoch, the checkpoint kept when the validation loss is <= the best so far, every
sample of the split, float32. ``sscr train --pretrain`` applies these before ``--set`` and the
other flags (which can still change any of them)."""


class EvaluateConfig(_Group):
    """Test-split evaluation (stage ``evaluate``)."""

    split: Literal["train", "val", "test"] = "test"
    out_dir: Path = Path("results/eval")
    coverage_bins: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    plot_every: int = Field(0, ge=-1)
    n_panels: int = Field(4, ge=0)
    export_every: int = Field(-1, ge=-1)
    batch_size: int = Field(4, ge=1)


class TuneConfig(_Group):
    """Optuna search over loss and architecture (stage ``tune``, ``sscr tune``; see :mod:`sscr.tune`).

    ``storage``: an SQLAlchemy URL (SQLite file by default, PostgreSQL for a
    team) or ``journal:<path>`` for Optuna's journal file. ``n_trials`` is the
    study's total over all workers and restarts. ``lr_range`` is searched on a
    log scale, ``widths`` are base widths (levels double them).
    """

    study_name: str = "sscr-tune"
    storage: str = "sqlite:///optuna.db"
    n_trials: int = Field(8, ge=1)
    timeout: float | None = Field(None, gt=0)
    seed: int = 0
    sampler_startup_trials: int = Field(4, ge=0)
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_startup_trials: int = Field(2, ge=0)
    pruner_warmup_epochs: int = Field(1, ge=0)
    epochs: int = Field(3, ge=1)
    losses: list[LossName] = Field(
        default_factory=lambda: ["l1", "l2", "structure", "GNLL", "MGNLL"], min_length=1)
    models: list[str] = Field(default_factory=lambda: ["sscr_lite"], min_length=1)
    block_types: list[Literal["mbconv", "residual"]] = Field(
        default_factory=lambda: ["mbconv", "residual"], min_length=1)
    widths: list[int] = Field(default_factory=lambda: [16, 32], min_length=1)
    n_heads: list[int] = Field(default_factory=lambda: [2, 4], min_length=1)
    lr_range: tuple[float, float] = (1e-4, 3e-3)
    w_struct_range: tuple[float, float] = (0.0, 0.5)
    use_sar: list[bool] = Field(default_factory=lambda: [True, False], min_length=1)
    heartbeat_interval: int = Field(30, ge=1)
    grace_period: int = Field(120, ge=2)
    trials_dir: Path = Path("results/tune")
    best_params: Path = Path("results/tune/best_params.yaml")

    @field_validator("lr_range", "w_struct_range")
    @classmethod
    def _ordered(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if bounds[0] > bounds[1] or bounds[0] < 0:
            raise ValueError(f"expected [low, high] with 0 <= low <= high, got {list(bounds)}")
        return bounds

    @field_validator("lr_range")
    @classmethod
    def _positive_lr(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if bounds[0] <= 0:
            raise ValueError(f"learning rates are searched on a log scale: the low end must be > 0, got {bounds[0]}")
        return bounds

    @model_validator(mode="after")
    def _grace_after_heartbeat(self) -> TuneConfig:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"tune.grace_period ({self.grace_period} s) must exceed tune.heartbeat_interval "
                             f"({self.heartbeat_interval} s), or live trials would be failed as stale")
        return self


class RegistryConfig(_Group):
    """Model registry: name, alias and the metric that decides promotion."""

    model_name: str = "sscr"
    alias: str = "champion"
    metric: str = "PSNR"


class Params(_Group):
    """All of ``params.yaml``."""

    data: DataConfig = Field(default_factory=DataConfig)
    masks: MasksConfig = Field(default_factory=MasksConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)


def run_dir(params: Params) -> Path:
    """The run directory of an experiment, ``<train.res_dir>/<train.experiment_name>``.

    Training writes it; evaluation, registration and the Prefect flows read it.
    """
    return Path(params.train.res_dir) / params.train.experiment_name


def record_dir(params: Params) -> Path:
    """Where a run's small, reproducible records live (``run.json``, ``metrics.csv``, evaluation metrics).

    ``<train.metrics_dir>/<train.experiment_name>`` (the DVC pipeline's ``metrics/sscr``, tracked
    by git so that ``dvc exp show`` compares experiments), or the run directory when
    ``train.metrics_dir`` is null. Training writes it; evaluation, registration and the flows read it.
    """
    if params.train.metrics_dir is None:
        return run_dir(params)
    return Path(params.train.metrics_dir) / params.train.experiment_name


class ConfigError(ValueError):
    """A params file or override that does not fit the schema; the message names the key."""


def _format_validation(err: ValidationError, source: str) -> str:
    lines = [f"{source} is not valid:"]
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; see params.yaml for the keys)")
        else:
            got = item.get("input")
            lines.append(f"  {key}: {item['msg']} (got {got!r})")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate a nested dict into :class:`Params`, raising :class:`ConfigError` with key names."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_format_validation(err, source)) from None


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> Params:
    """Read ``params.yaml`` (missing file = all defaults) and apply ``key.sub=value`` overrides."""
    path = Path(path)
    raw: dict[str, Any] = {}
    if path.exists() or path.is_symlink():  # a link to nowhere (or a loop) is an error, not "missing"
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of groups, got {type(raw).__name__}")
    for override in overrides or []:
        apply_override(raw, override)
    return parse_params(raw, str(path))


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``group.key=value`` override (value parsed as YAML) to a nested dict in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like group.key=value")
    key, value = override.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a group")
    node[parts[-1]] = yaml.safe_load(value)


def flatten(params: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested params into ``{"group.key": value}`` for MLflow and tables."""
    data = params.model_dump(mode="json") if isinstance(params, BaseModel) else params
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
