"""Typed configuration: one pydantic model per ``params.yaml`` group.

``params.yaml`` is the single source of every knob. Each stage reads only its
groups. Unknown keys and wrong types are refused with the key's dotted name,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import json
import reprlib
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
PARAMS_MAX_BYTES = 256 * 1024
"""Largest params file read (``params.yaml``, ``--params``, a run's ``conf.json``): ours is 6 KB."""
YAML_MAX_NODES = 10_000
"""Most YAML nodes (scalars, lists, mappings) a params document may hold once its aliases are expanded; ours
holds about 150. Counted on the composed node graph, before anything is constructed, so an anchor bomb
(a few hundred bytes that expand to billions of values) is refused in milliseconds."""
YAML_MAX_DEPTH = 32
"""Deepest nesting of a params document, aliases expanded (ours: 4)."""
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
    backbone's default: true for ``sscr_lite`` and ``mask_unet``, false for the published
    ``uncrtaints``, ``multisarv2``, ``unet`` and ``utae``, which take no mask (``true`` is
    refused there). ``mask_beta`` is MultiSARv2's structure-mask gate (0 = published: no gating).
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

    The defaults are the seed's command line under the published protocol (20 epochs, lr 1e-3,
    batch 8, gamma 1; :data:`PUBLISHED_PROTOCOL` holds the published parser's own defaults for
    flags a command line leaves out), except ``amp`` (mixed precision where CUDA runs);
    ``params.yaml`` holds this project's CPU-sized choices. ``crop_size``: random crops of that size
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
    # the optimiser: Adam, ExponentialLR stepped after every epoch; the published parser's defaults for the flags
    # a command line leaves out (the seed's line gives --epochs 20 --lr 0.001 --batch_size 8 --gamma 1.0 --rdm_seed 1)
    "train.schedule": "exponential", "train.epochs": 20, "train.lr": 0.01, "train.batch_size": 4, "train.gamma": 1.0,
    "train.rdm_seed": 1,
    # every sample of the split once per epoch, whole 256 px patches, as stored
    "train.repeats": 1, "train.crop_size": None, "train.augment": False,
    "train.min_cov": 0.0, "train.max_cov": 1.0, "train.max_samples": None,
    # validation after every epoch; model.pth.tar kept when the validation loss is <= the best so far
    "train.val_every": 1, "train.val_after": 0, "train.select_best": "val_loss",
    # float32; MultiSARv2's structure-mask gate off (mask_beta is 0 in the published network)
    "train.amp": False, "model.mask_beta": 0.0,
}
"""How the seed's script trains with ``--pretrain`` (github.com/RSIR25/sscr ``model/train_reconstruct.py``
and ``parse_args.py``), every training choice it makes: ``sscr train --pretrain`` applies these first,
then ``--set`` and the seed's flags (which change any of them, as the flags do in the published script),
then :data:`PUBLISHED_MODEL_PROTOCOL`. The README's protocol table is tested against this dict."""

PUBLISHED_MODEL_PROTOCOL: dict[str, dict[str, Any]] = {
    "unet": {"loss.name": "l2", "train.batch_size": 32},
    "utae": {"loss.name": "l2"},
}
"""What the published script forces for a ``--model`` whatever ``--loss`` and ``--batch_size`` say
(``train_reconstruct.py``: ``unet`` and ``utae`` train with ``l2``, ``unet`` under ``--pretrain`` with
batch 32). ``sscr train --pretrain`` applies it after the seed's flags; a key given with ``--set`` wins
over both."""


def published_model_protocol(model_name: str, given: set[str]) -> dict[str, Any]:
    """The :data:`PUBLISHED_MODEL_PROTOCOL` of ``model_name`` without the keys in ``given`` (set with ``--set``)."""
    forced = PUBLISHED_MODEL_PROTOCOL.get(MODEL_ALIASES.get(model_name, model_name), {})
    return {key: value for key, value in forced.items() if key not in given}


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
    """Model registry: name, aliases and rule 1 (``sscr.registry``): what beats the champion beyond noise."""

    model_name: str = "sscr"
    alias: str = "champion"
    challenger: str = "challenger"   # the alias of a version that does not beat the champion beyond noise
    metric: Literal["PSNR"] = "PSNR"   # scored per validation image (sscr.validation)
    min_gain: float = Field(default=0.0, ge=0.0)   # dB: no smaller than the measured seed-to-seed spread
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)   # of the paired bootstrap interval


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


def _short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error quotes what it got, never a whole document."""
    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxlist, shortener.maxdict = 3, 6, 6
    shortener.maxstring = shortener.maxother = limit
    text = shortener.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_validation(err: ValidationError, source: str) -> str:
    lines = [f"{source} is not valid:"]
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; see params.yaml for the keys)")
        else:
            lines.append(f"  {key}: {item['msg']} (got {_short_repr(item.get('input'))})")
    return "\n".join(lines)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses a document nested deeper than :data:`YAML_MAX_DEPTH` while composing it,
    and one whose aliases expand to more than :data:`YAML_MAX_NODES` nodes before constructing it."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                raise _YamlTooLarge(f"nests deeper than {YAML_MAX_DEPTH} levels; params are groups of keys, "
                                    "a few levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)


class _YamlTooLarge(Exception):
    """A YAML document beyond the limits; the message says which."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes and depth of ``root`` with every alias expanded, without expanding anything.

    An alias is the same node object as its anchor, so sizes are summed over the node graph with one
    entry per distinct node (linear time); a node that contains itself is refused.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(kid)] for kid in kids)
            depth[key] = 1 + max((depth[id(kid)] for kid in kids), default=0)
            open_nodes.discard(key)
            if size[key] > YAML_MAX_NODES:
                raise _YamlTooLarge(f"expands its aliases (*name) to more than {YAML_MAX_NODES:,} values; "
                                   "write the values out instead")
            if depth[key] > YAML_MAX_DEPTH:
                raise _YamlTooLarge(f"nests deeper than {YAML_MAX_DEPTH} levels once its aliases are expanded; "
                                   "write the values out instead")
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise _YamlTooLarge("holds an alias to a node that contains it (a recursive structure); "
                                 "write the values out instead")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((kid, False) for kid in _children(node) if id(kid) not in size)


def safe_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)`` within the limits :data:`YAML_MAX_NODES` and :data:`YAML_MAX_DEPTH`.

    Raises :class:`ConfigError` naming ``source`` for invalid YAML and for a document beyond the limits
    (an anchor bomb is refused before a single value of it is built).
    """
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _YamlTooLarge as err:
        raise ConfigError(f"{source} refused: it {err} (limits: {YAML_MAX_NODES:,} values, "
                          f"{YAML_MAX_DEPTH} levels)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {err}") from None
    finally:
        loader.dispose()


def read_config_text(path: str | Path, limit: int = PARAMS_MAX_BYTES, what: str = "params file") -> str:
    """The text of a small configuration file, refused (ConfigError naming it) beyond ``limit`` bytes.

    Reads at most ``limit + 1`` bytes, so a huge file, a device or a FIFO costs no more than that.
    """
    path = Path(path)
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"{path} is larger than {limit // 1024} KiB, the limit for a {what}: "
                          "pass the right file (params.yaml is a few KB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): pass a {what}") from None


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate a nested dict into :class:`Params`, raising :class:`ConfigError` with key names."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_format_validation(err, source)) from None


def read_json_config(path: str | Path, what: str = "conf.json") -> Any:
    """A small JSON configuration file (a run's or the published ``conf.json``), within :data:`PARAMS_MAX_BYTES`.

    Invalid JSON, a file over the limit and nesting too deep for the parser are :class:`ConfigError` naming it.
    """
    text = read_config_text(path, what=what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path} nests too deeply to be a {what}: pass the right file") from None


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> Params:
    """Read ``params.yaml`` (missing file = all defaults) and apply ``key.sub=value`` overrides."""
    path = Path(path)
    raw: dict[str, Any] = {}
    if path.exists() or path.is_symlink():  # a link to nowhere (or a loop) is an error, not "missing"
        raw = safe_yaml(read_config_text(path), str(path)) or {}
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
    node[parts[-1]] = safe_yaml(value, f"override {key.strip()}")


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
