"""What every backbone shares: constructor arguments, input checks and shaping, ``config``.

Every backbone is built with the ``params.yaml`` ``model:`` keys (minus ``name``)
plus ``variance``; keys a backbone does not use are accepted and kept in
``config`` unchanged, so one ``model:`` group fits all backbones and
``build_model(name, **model.config)`` rebuilds a checkpoint's model exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from sscr.models.blocks import BLOCK_TYPES, S1_CHANNELS, S2_CHANNELS, VARIANCES


@dataclass
class Inputs:
    """Model inputs as 5-d tensors (B, T, C, H, W), values in [0, 1], not yet scaled."""

    cloudy: torch.Tensor
    sar: torch.Tensor | None
    mask: torch.Tensor | None

    @property
    def steps(self) -> int:
        """Number of time steps T."""
        return self.cloudy.shape[1]

    def stacked(self, scale_by: float) -> torch.Tensor:
        """Optical (and SAR) times ``scale_by``, then the mask, along channels: (B, T, C, H, W)."""
        parts = [self.cloudy * scale_by]
        if self.sar is not None:
            parts.append(self.sar * scale_by)
        if self.mask is not None:
            parts.append(self.mask)
        return torch.cat(parts, dim=2)


class CloudRemovalModel(nn.Module):
    """Base of every backbone: validated common arguments and input handling.

    Inputs of ``forward(cloudy, sar=None, mask=None)``:

    - ``cloudy`` (B, 13, H, W), S2 in [0, 1]; temporal backbones also take (B, T, 13, H, W).
    - ``sar`` (B, 2, H, W) or (B, T, 2, H, W), S1 in [0, 1]; required when ``use_sar``,
      ignored otherwise. A single SAR frame is repeated over T.
    - ``mask`` (B, H, W), (B, 1, H, W) or (B, T, 1, H, W), cloud probability in [0, 1];
      used when ``use_mask``. ``None`` while ``use_mask`` means "no mask known" and is
      treated as all cloudy (ones): the model then reconstructs every pixel and passes
      nothing through.

    H and W must be multiples of :attr:`size_multiple` and at least twice it.
    Outputs: ``{"mean": (B, 13, H, W) in [0, 1]}``, plus ``"var"`` (B, 13 or 1, H, W) > 0
    when ``variance`` is set (see :class:`~sscr.models.blocks.OutputHeads`).
    """

    model_name: ClassVar[str] = ""
    temporal: ClassVar[bool] = False
    """True when the backbone takes T > 1 time steps."""

    def __init__(
        self,
        *,
        use_sar: bool,
        use_mask: bool,
        scale_by: float,
        block_type: str,
        n_head: int | None,
        d_model: int | None,
        encoder_widths: list[int] | None,
        decoder_widths: list[int] | None,
        variance: str | None,
    ) -> None:
        super().__init__()
        name = self.model_name or type(self).__name__
        if variance not in VARIANCES:
            raise ValueError(f"{name}: variance must be one of {list(VARIANCES)}, got {variance!r}")
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"{name}: block_type must be one of {list(BLOCK_TYPES)}, got {block_type!r}")
        if not scale_by > 0:
            raise ValueError(f"{name}: scale_by must be > 0, got {scale_by!r}")
        for key, value in (("n_head", n_head), ("d_model", d_model)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}: {key} must be a positive integer, got {value!r}")
        for key, widths in (("encoder_widths", encoder_widths), ("decoder_widths", decoder_widths)):
            if widths is not None and (
                not widths or not all(isinstance(w, int) and w > 0 for w in widths)
            ):
                raise ValueError(f"{name}: {key} must be a non-empty list of positive integers, got {widths!r}")
        self.use_sar = bool(use_sar)
        self.use_mask = bool(use_mask)
        self.scale_by = float(scale_by)
        self.variance = variance
        self.size_multiple = 1
        self.config: dict[str, Any] = {
            "use_sar": self.use_sar,
            "use_mask": self.use_mask,
            "scale_by": self.scale_by,
            "block_type": block_type,
            "n_head": n_head,
            "d_model": d_model,
            "encoder_widths": list(encoder_widths) if encoder_widths is not None else None,
            "decoder_widths": list(decoder_widths) if decoder_widths is not None else None,
            "variance": variance,
        }

    @property
    def in_channels(self) -> int:
        """Channels per time step fed to the network: 13 optical, + 2 SAR, + 1 mask."""
        return S2_CHANNELS + S1_CHANNELS * self.use_sar + self.use_mask

    def prepare(
        self, cloudy: torch.Tensor, sar: torch.Tensor | None, mask: torch.Tensor | None
    ) -> Inputs:
        """Check shapes and bring every input to (B, T, C, H, W); ValueError naming the problem."""
        name = self.model_name
        if cloudy.dim() == 4:
            cloudy = cloudy.unsqueeze(1)
        if cloudy.dim() != 5 or cloudy.shape[2] != S2_CHANNELS:
            raise ValueError(
                f"{name}: cloudy must be (B, {S2_CHANNELS}, H, W) or (B, T, {S2_CHANNELS}, H, W), got {tuple(cloudy.shape)}"
            )
        batch, steps, _, height, width = cloudy.shape
        if steps > 1 and not self.temporal:
            raise ValueError(f"{name} is mono-temporal: cloudy has T={steps} time steps, expected 1")
        self.check_size(height, width)

        if self.use_sar:
            if sar is None:
                raise ValueError(f"{name} was built with use_sar=True: pass sar (B, {S1_CHANNELS}, H, W)")
            sar = self._as_steps(sar, S1_CHANNELS, "sar", batch, steps, height, width)
        else:
            sar = None

        if self.use_mask:
            if mask is None:
                mask = cloudy.new_ones(batch, steps, 1, height, width)
            else:
                if mask.dim() == 3:
                    mask = mask.unsqueeze(1)
                mask = self._as_steps(mask, 1, "mask", batch, steps, height, width).clamp(0.0, 1.0)
        else:
            mask = None
        return Inputs(cloudy=cloudy, sar=sar, mask=mask)

    def _as_steps(
        self, tensor: torch.Tensor, channels: int, what: str, batch: int, steps: int, height: int, width: int
    ) -> torch.Tensor:
        if tensor.dim() == 4:
            tensor = tensor.unsqueeze(1)
        expected = (batch, channels, height, width)
        if tensor.dim() != 5 or (tensor.shape[0], *tensor.shape[2:]) != expected or tensor.shape[1] not in (1, steps):
            raise ValueError(
                f"{self.model_name}: {what} must be (B, {channels}, H, W) matching cloudy "
                f"(B={batch}, T={steps}, H={height}, W={width}), got {tuple(tensor.shape)}"
            )
        return tensor.expand(batch, steps, channels, height, width).to(dtype=self._dtype(tensor))

    @staticmethod
    def _dtype(tensor: torch.Tensor) -> torch.dtype:
        return tensor.dtype if tensor.is_floating_point() else torch.float32

    def check_size(self, height: int, width: int) -> None:
        """ValueError unless H and W are multiples of :attr:`size_multiple` and at least twice it."""
        multiple = self.size_multiple
        if height % multiple or width % multiple or min(height, width) < 2 * multiple:
            raise ValueError(
                f"{self.model_name} needs height and width that are multiples of {multiple} "
                f"and at least {2 * multiple} (its total downsampling); got {height} x {width}: "
                "crop or pad the patch"
            )
