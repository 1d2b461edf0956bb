"""Training losses: finiteness on extreme inputs, NLL identities, ml's terms, the name mapping."""

from __future__ import annotations

import math

import pytest
import torch

from sscr.config import LossConfig
from sscr.losses import (
    LOSS_NAMES,
    build_loss,
    gaussian_nll,
    multivariate_gaussian_nll,
    structure_map,
    variance_mode,
)
from sscr.metrics import ssim_map

SHAPE = (2, 13, 12, 12)


def _output(cfg: LossConfig, mean: torch.Tensor, structure: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """A model-like output with leaf tensors behind every entry, so gradients can be checked."""
    generator = torch.Generator().manual_seed(1)
    mean = mean.clone().requires_grad_(True)
    output: dict[str, torch.Tensor] = {"mean": mean}
    leaves = {"mean": mean}
    mode = variance_mode(cfg)
    if mode is not None:
        raw = torch.randn(SHAPE[0], SHAPE[1] if mode == "diag" else 1, *SHAPE[2:], generator=generator)
        raw.requires_grad_(True)
        output["var"] = torch.nn.functional.softplus(raw) * 0.01
        leaves["var"] = raw
    if structure:
        raw = torch.randn(SHAPE[0], 1, *SHAPE[2:], generator=generator).requires_grad_(True)
        output["structure"] = torch.sigmoid(raw)
        leaves["structure"] = raw
    return output, leaves


CASES = {
    "random": lambda: (torch.rand(SHAPE, generator=torch.Generator().manual_seed(2)),
                       torch.rand(SHAPE, generator=torch.Generator().manual_seed(3))),
    "zeros": lambda: (torch.zeros(SHAPE), torch.zeros(SHAPE)),
    "saturated": lambda: (torch.ones(SHAPE), torch.ones(SHAPE)),
    "opposite": lambda: (torch.zeros(SHAPE), torch.ones(SHAPE)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name,covmode", [("l1", "diag"), ("l2", "diag"), ("ml", "diag"), ("GNLL", "diag"),
                                          ("MGNLL", "diag"), ("MGNLL", "iso")])
def test_losses_are_finite_with_finite_gradients(name, covmode, case):
    cfg = LossConfig(name=name, covmode=covmode)
    mean, target = CASES[case]()
    output, leaves = _output(cfg, mean)
    total, parts = build_loss(cfg)(output, target)
    assert total.ndim == 0 and torch.isfinite(total)
    assert all(math.isfinite(value) for value in parts.values())
    assert parts["total"] == pytest.approx(float(total.detach()), rel=1e-6)
    total.backward()
    used = ["mean"] + (["var"] if "var" in leaves else []) + (["structure"] if name == "ml" else [])
    for key in used:
        assert leaves[key].grad is not None and torch.isfinite(leaves[key].grad).all()
    if case == "random":  # a wrong prediction must be pushed somewhere
        assert leaves["mean"].grad.abs().sum() > 0


def test_mgnll_diag_equals_gnll_exactly():
    generator = torch.Generator().manual_seed(4)
    mean, target = torch.rand(SHAPE, generator=generator, dtype=torch.float64), torch.rand(
        SHAPE, generator=generator, dtype=torch.float64)
    var = torch.rand(SHAPE, generator=generator, dtype=torch.float64) * 0.05
    var[0, 0] = 1e-7  # below the floor: both must floor it the same way
    weight = torch.rand(SHAPE[0], 1, *SHAPE[2:], generator=generator, dtype=torch.float64)
    for w in (None, weight):
        gnll = gaussian_nll(mean, target, var, 1e-4, w)
        mgnll = multivariate_gaussian_nll(mean, target, var, "diag", 1e-4, w)
        torch.testing.assert_close(mgnll, gnll, rtol=1e-13, atol=0)
    # Through build_loss (float32) the two configurations agree as well.
    output = {"mean": mean.float(), "var": var.float()}
    gnll_total, _ = build_loss(LossConfig(name="GNLL"))(output, target.float())
    mgnll_total, _ = build_loss(LossConfig(name="MGNLL", covmode="diag"))(output, target.float())
    torch.testing.assert_close(mgnll_total, gnll_total, rtol=1e-6, atol=1e-6)


def test_mgnll_iso_is_gnll_with_one_shared_variance():
    generator = torch.Generator().manual_seed(5)
    mean, target = torch.rand(SHAPE, generator=generator, dtype=torch.float64), torch.rand(
        SHAPE, generator=generator, dtype=torch.float64)
    sigma2 = torch.rand(SHAPE[0], 1, *SHAPE[2:], generator=generator, dtype=torch.float64) * 0.05 + 1e-3
    iso = multivariate_gaussian_nll(mean, target, sigma2, "iso", 1e-4)
    torch.testing.assert_close(iso, gaussian_nll(mean, target, sigma2.expand(SHAPE), 1e-4), rtol=1e-13, atol=0)
    # By hand for one pixel, C = 13: 0.5 (13 log s2 + |r|^2 / s2 + 13 log 2 pi) / 13
    r = (mean - target)[0, :, 0, 0]
    s2 = sigma2[0, 0, 0, 0]
    by_hand = 0.5 * (13 * torch.log(s2) + (r**2).sum() / s2 + 13 * math.log(2 * math.pi)) / 13
    single = multivariate_gaussian_nll(mean[:1, :, :1, :1], target[:1, :, :1, :1], sigma2[:1, :, :1, :1], "iso", 1e-4)
    torch.testing.assert_close(single, by_hand)
    with pytest.raises(ValueError, match="covmode 'iso' needs a variance of shape"):
        multivariate_gaussian_nll(mean, target, sigma2.expand(SHAPE), "iso", 1e-4)


def test_gnll_is_lower_when_variance_matches_the_squared_error():
    generator = torch.Generator().manual_seed(6)
    target = torch.rand(SHAPE, generator=generator) * 0.5
    error = 0.05 + 0.2 * torch.rand(SHAPE, generator=generator)
    mean = target + error
    loss = build_loss(LossConfig(name="GNLL"))
    matched, _ = loss({"mean": mean, "var": error**2}, target)
    for factor in (0.25, 4.0):
        worse, _ = loss({"mean": mean, "var": error**2 * factor}, target)
        assert matched < worse
    constant, _ = loss({"mean": mean, "var": torch.full(SHAPE, float((error**2).mean()))}, target)
    assert matched < constant


def test_ml_structure_term_only_with_structure_output():
    cfg = LossConfig(name="ml")
    mean, target = CASES["random"]()
    loss = build_loss(cfg)
    without, parts_without = loss({"mean": mean}, target)
    output, _ = _output(cfg, mean, structure=True)
    with_structure, parts_with = loss(output, target)
    assert "struct" not in parts_without and "struct" in parts_with
    assert set(parts_without) == {"l1", "grad", "one_minus_ssim", "total"}
    assert parts_with["struct"] > 0
    assert parts_with["total"] == pytest.approx(parts_without["total"] + cfg.w_struct * parts_with["struct"], rel=1e-5)
    assert with_structure.requires_grad
    # A perfect structure head adds nothing.
    perfect, parts = loss({"mean": mean, "structure": structure_map(target)}, target)
    assert parts["struct"] == 0 and float(perfect) == pytest.approx(float(without), rel=1e-6)


def test_ml_reuses_the_benchmark_ssim_and_weights_its_terms():
    mean, target = CASES["random"]()
    only_ssim = LossConfig(name="ml", w_l1=0, w_grad=0, w_struct=0, w_ssim=1)
    total, parts = build_loss(only_ssim)({"mean": mean}, target)
    assert set(parts) == {"one_minus_ssim", "total"}
    assert float(total) == pytest.approx(1 - float(ssim_map(mean, target).mean()), rel=1e-6)
    # The gradient term sees edges: a shifted copy has the same L1 to a flat image but not the same gradients.
    flat = torch.full(SHAPE, 0.5)
    stripes = flat.clone()
    stripes[..., ::2] += 0.1
    only_grad = build_loss(LossConfig(name="ml", w_l1=0, w_grad=1, w_struct=0, w_ssim=0))
    assert float(only_grad({"mean": flat + 0.1}, flat)[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(only_grad({"mean": stripes}, flat)[0]) > 0.05


def test_mask_weights_select_pixels():
    target = torch.zeros(SHAPE)
    mean = target.clone()
    mean[..., :4] = 0.3  # wrong only in the first 4 columns
    weight = torch.ones(SHAPE[0], *SHAPE[2:])
    weight[..., :4] = 0
    for name in ("l1", "l2"):
        loss = build_loss(LossConfig(name=name))
        assert float(loss({"mean": mean}, target, weight)[0]) == 0
        assert float(loss({"mean": mean}, target, 1 - weight)[0]) == pytest.approx(0.3 if name == "l1" else 0.09)
        assert float(loss({"mean": mean}, target)[0]) > 0
    all_zero, _ = build_loss(LossConfig(name="ml"))({"mean": mean}, target, torch.zeros(SHAPE[0], *SHAPE[2:]))
    assert torch.isfinite(all_zero)


def test_structure_map_range_edges_and_flat_images():
    image = torch.zeros(1, 13, 16, 16)
    image[..., 8:] = 0.6  # a vertical edge between columns 7 and 8
    structure = structure_map(image)
    assert structure.shape == (1, 1, 16, 16)
    assert structure.min() >= 0 and structure.max() == pytest.approx(1.0)
    assert structure[0, 0, :, 7:9].mean() > 0.8 and structure[0, 0, :, 0].max() < 0.05
    assert structure_map(torch.full((2, 13, 16, 16), 0.4)).abs().max() < 1e-6
    assert structure_map(torch.rand(1, 13, 3, 3)).shape == (1, 1, 3, 3)  # coarse scales skipped


def test_variance_mode_mapping_and_unknown_names():
    assert variance_mode(LossConfig(name="GNLL")) == "diag"
    assert variance_mode(LossConfig(name="MGNLL", covmode="iso")) == "iso"
    assert variance_mode(LossConfig(name="MGNLL", covmode="diag")) == "diag"
    for name in ("l1", "l2", "ml"):
        assert variance_mode(LossConfig(name=name)) is None
    assert set(LOSS_NAMES) == {"l1", "l2", "ml", "GNLL", "MGNLL"}
    bogus = LossConfig.model_construct(name="focal", covmode="diag", var_floor=1e-4)
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        build_loss(bogus)
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        variance_mode(bogus)


def test_probabilistic_loss_without_variance_says_what_to_do():
    mean, target = CASES["random"]()
    with pytest.raises(KeyError, match="variance mode 'diag'"):
        build_loss(LossConfig(name="GNLL"))({"mean": mean}, target)
    with pytest.raises(ValueError, match="does not fit target"):
        build_loss(LossConfig(name="GNLL"))({"mean": mean, "var": torch.ones(2, 5, 12, 12)}, target)
