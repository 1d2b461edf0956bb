"""Import the published code (a checkout of github.com/RSIR25/sscr) with stand-ins for what it lacks.

The published scripts import modules that are not in the checkout or not installed
here, none of which the paths used by our tools run:

- ``src.backbones.promptir``, ``multisar``, ``multisarv3``: imported by ``model_utils``,
  absent from the checkout (only ``multisarv2`` is published); empty modules;
- ``ipdb``: imported by the backbones, never called; an empty module;
- ``fvcore.nn``: ``FlopCountAnalysis`` for ``--profile`` only; raises if called;
- ``torchnet.meter.AverageValueMeter``: the loss meter of ``train_reconstruct.iterate``;
  a running mean and standard deviation (``value()`` -> (mean, std));
- ``natsort.natsorted``: the data loader's directory order; a natural sort
  (digit runs compared as numbers);
- ``torch.utils.tensorboard.SummaryWriter`` (when ``tensorboard`` is not installed):
  logging only; every method does nothing;
- ``s2cloudless.S2PixelCloudDetector`` (when ``s2cloudless`` is not installed, as on the lent
  GPU machine): imported by the published data loader; raises if built, so only a loop fed
  with batches already in memory runs (``benchmarks/gpu_check.py``).

Stand-ins are put in ``sys.modules`` only where the real module cannot be imported.
Nothing of the published code is copied: it is imported from the checkout.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


class AverageValueMeter:
    """Running mean and (sample) standard deviation of the values added (torchnet's interface)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every value."""
        self.n, self.total, self.squares = 0, 0.0, 0.0

    def add(self, value: float, n: int = 1) -> None:
        """Add ``value`` (``n`` times)."""
        self.n += n
        self.total += float(value) * n
        self.squares += float(value) ** 2 * n

    def value(self) -> tuple[float, float]:
        """(mean, std); (nan, nan) before any value."""
        if self.n == 0:
            return math.nan, math.nan
        mean = self.total / self.n
        variance = (self.squares - self.n * mean**2) / (self.n - 1) if self.n > 1 else 0.0
        return mean, math.sqrt(max(variance, 0.0))


def natsorted(items: Any, key: Any = None) -> list[Any]:
    """``items`` sorted with digit runs compared as numbers ("p2" before "p10")."""
    def natural(item: Any) -> list[Any]:
        text = str(key(item) if key else item)
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]

    return sorted(items, key=natural)


class SummaryWriter:
    """TensorBoard writer that writes nothing (every ``add_*``, ``flush`` and ``close`` is a no-op)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _flops_unavailable(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("fvcore is not installed: the published --profile option is not available here")


def _detector_unavailable(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("s2cloudless is not installed: the published data loader cannot compute its cloud masks here; "
                       "feed the published loop batches already in memory")


def install_stubs() -> list[str]:
    """Put stand-ins for the modules the published code imports but cannot get here; returns their names."""
    installed = []

    def need(name: str) -> bool:
        if name in sys.modules:
            return False
        try:
            importlib.import_module(name)
        except ImportError:
            return True
        return False

    if need("ipdb"):
        sys.modules["ipdb"] = _module("ipdb")
        installed.append("ipdb")
    if need("fvcore"):
        nn_module = _module("fvcore.nn", FlopCountAnalysis=_flops_unavailable, flop_count_table=_flops_unavailable)
        sys.modules["fvcore"] = _module("fvcore", nn=nn_module)
        sys.modules["fvcore.nn"] = nn_module
        installed.append("fvcore")
    if need("torchnet"):
        meter = _module("torchnet.meter", AverageValueMeter=AverageValueMeter)
        sys.modules["torchnet"] = _module("torchnet", meter=meter)
        sys.modules["torchnet.meter"] = meter
        installed.append("torchnet")
    if need("natsort"):
        sys.modules["natsort"] = _module("natsort", natsorted=natsorted)
        installed.append("natsort")
    if need("s2cloudless"):
        sys.modules["s2cloudless"] = _module("s2cloudless", S2PixelCloudDetector=_detector_unavailable)
        installed.append("s2cloudless")
    if need("torch.utils.tensorboard"):
        import torch.utils

        board = _module("torch.utils.tensorboard", SummaryWriter=SummaryWriter)
        sys.modules["torch.utils.tensorboard"] = board
        torch.utils.tensorboard = board
        installed.append("torch.utils.tensorboard")
    return installed


def prepare(checkout: Path) -> Path:
    """Check ``checkout``, install the stand-ins, put its ``model/`` and root on ``sys.path``; returns ``model/``.

    The absent backbones (``promptir``, ``multisar``, ``multisarv3``) become empty
    modules of the checkout's ``src.backbones`` package.
    """
    checkout = Path(checkout).resolve()
    model_dir = checkout / "model"
    if not (model_dir / "src" / "backbones" / "multisarv2.py").is_file():
        raise SystemExit(f"{checkout} is not a checkout of RSIR25/sscr (no model/src/backbones/multisarv2.py)")
    install_stubs()
    for path in (str(checkout), str(model_dir)):
        if path not in sys.path:
            sys.path.insert(0, path)
    importlib.import_module("src.backbones")
    for name in ("promptir", "multisar", "multisarv3"):
        full = f"src.backbones.{name}"
        if full not in sys.modules and not (model_dir / "src" / "backbones" / f"{name}.py").exists():
            sys.modules[full] = _module(full)
            setattr(sys.modules["src.backbones"], name, sys.modules[full])
    return model_dir


def published_modules(checkout: Path) -> types.SimpleNamespace:
    """The published modules our tools use: parser, model_utils (BaseModel), losses, init, backbones."""
    prepare(checkout)
    with _working_directory(Path(checkout) / "model"):  # model_utils changes into ./model when it exists
        model_utils = importlib.import_module("src.model_utils")
    return types.SimpleNamespace(
        parse_args=importlib.import_module("parse_args"),
        model_utils=model_utils,
        base_model=importlib.import_module("src.backbones.base_model"),
        losses=importlib.import_module("src.losses"),
        utils=importlib.import_module("src.utils"),
        weight_init=importlib.import_module("src.learning.weight_init").weight_init,
        UNCRTAINTS=importlib.import_module("src.backbones.uncrtaints").UNCRTAINTS,
        MultiSARv2=importlib.import_module("src.backbones.multisarv2").MultiSARv2,
    )


def import_script(checkout: Path, name: str, argv: list[str], cwd: Path) -> types.ModuleType:
    """Import the published script ``model/<name>.py`` as its command line ``argv`` would run it, in ``cwd``.

    The training and test scripts parse ``sys.argv`` and create their output folders at
    import; ``cwd`` keeps those out of the caller's directory. Its ``main`` is not run.
    """
    prepare(checkout)
    saved = sys.argv
    sys.argv = [str(Path(checkout) / "model" / f"{name}.py"), *argv]
    sys.modules.pop(name, None)  # a script configures itself at import: a second command line imports it anew
    try:
        with _working_directory(cwd):
            return importlib.import_module(name)
    finally:
        sys.argv = saved


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
