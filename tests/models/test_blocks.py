"""The shared blocks: what each one promises, checked on tiny tensors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sscr.models.blocks import (
    VAR_FLOOR,
    LowResAttention,
    MBConv,
    OutputHeads,
    ResidualBlock,
    conv2d,
    norm_layer,
)


@pytest.mark.parametrize("block", [MBConv(8, "group"), MBConv(8, "batch"), ResidualBlock(8, "group")])
def test_blocks_preserve_shape_and_are_residual(block):
    features = torch.randn(2, 8, 12, 12)
    out = block(features)
    assert out.shape == features.shape
    for param in block.parameters():
        torch.nn.init.zeros_(param)
    if isinstance(block, MBConv):  # zero branch -> identity
        torch.testing.assert_close(block(features), features)


def test_reflect_padding_has_no_dark_border():
    conv = conv2d(1, 1, 3, bias=False)
    torch.nn.init.constant_(conv.weight, 1.0 / 9)
    out = conv(torch.ones(1, 1, 8, 8))
    torch.testing.assert_close(out, torch.ones(1, 1, 8, 8))  # zero padding would darken the frame


def test_group_norm_falls_back_to_a_dividing_group_count():
    assert norm_layer("group", 6).num_groups == 2
    with pytest.raises(ValueError, match="unknown norm"):
        norm_layer("layer", 6)


def test_low_res_attention_cost_is_linear_in_pixels():
    block = LowResAttention(16, n_head=4, d_model=16, grid=4)

    def flops(size: int) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            assert block(torch.randn(1, 16, size, size)).shape == (1, 16, size, size)
        return counter.get_total_flops()

    # affine in the number of pixels (the key / value projection of the fixed grid is the constant);
    # full attention would make the increments grow 16-fold, not 4-fold
    small, medium, large = flops(16), flops(32), flops(64)
    assert large - medium == pytest.approx(4 * (medium - small), rel=1e-6)


def test_low_res_attention_mixes_information_globally():
    torch.manual_seed(0)
    block = LowResAttention(8, n_head=2, d_model=8, grid=4).eval()
    features = torch.randn(1, 8, 16, 16)
    changed = features.clone()
    changed[..., 12:, 12:] += 5.0  # a far corner
    delta = (block(changed) - block(features))[..., :4, :4]
    assert delta.abs().max() > 1e-4


@pytest.mark.parametrize(("variance", "channels"), [(None, 0), ("diag", 13), ("iso", 1)])
def test_output_heads(variance, channels):
    heads = OutputHeads(8, variance, scale_by=10.0)
    with torch.no_grad():
        heads.conv.bias.fill_(-50.0)  # softplus underflows: the floor must hold
    out = heads(torch.randn(2, 8, 4, 4))
    assert out["mean"].shape == (2, 13, 4, 4)
    assert 0 <= out["mean"].min() and out["mean"].max() <= 1
    if channels:
        assert out["var"].shape == (2, channels, 4, 4)
        assert out["var"].min() >= VAR_FLOOR
    else:
        assert "var" not in out
