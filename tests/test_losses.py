"""Training losses: finiteness on extreme inputs, the scale convention, NLL identities, ml's and structure's terms.

Equality with the published losses is tested in tests/models/test_published_parity.py.
"""

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
    pearson_correlation,
    structure_map,
    variance_mode,
)
from sscr.metrics import ssim_map

SHAPE = (2, 13, 12, 12)
SCALE = 10.0


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
        for key in ("structure", "sar_mask"):
            raw = torch.randn(SHAPE[0], 1, *SHAPE[2:], generator=generator).requires_grad_(True)
            output[key] = torch.sigmoid(raw)
            leaves[key] = raw
    return output, leaves


CASES = {
    "random": lambda: (torch.rand(SHAPE, generator=torch.Generator().manual_seed(2)),
                       torch.rand(SHAPE, generator=torch.Generator().manual_seed(3))),
    "zeros": lambda: (torch.zeros(SHAPE), torch.zeros(SHAPE)),
    "saturated": lambda: (torch.ones(SHAPE), torch.ones(SHAPE)),
    "opposite": lambda: (torch.zeros(SHAPE), torch.ones(SHAPE)),
}


READS = {"ml": "sar_mask", "structure": "structure"}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name,covmode", [("l1", "diag"), ("l2", "diag"), ("ml", "diag"), ("structure", "diag"),
                                          ("GNLL", "diag"), ("MGNLL", "diag"), ("MGNLL", "iso")])
def test_losses_are_finite_with_finite_gradients(name, covmode, case):
    cfg = LossConfig(name=name, covmode=covmode)
    mean, target = CASES[case]()
    output, leaves = _output(cfg, mean)
    total, parts = build_loss(cfg, SCALE)(output, target)
    assert total.ndim == 0 and torch.isfinite(total)
    assert all(math.isfinite(value) for value in parts.values())
    assert parts["total"] == pytest.approx(float(total.detach()), rel=1e-6)
    total.backward()
    used = ["mean"] + (["var"] if "var" in leaves else []) + ([READS[name]] if name in READS else [])
    for key in used:
        assert leaves[key].grad is not None and torch.isfinite(leaves[key].grad).all()
    if case == "random":  # a wrong prediction must be pushed somewhere
        assert leaves["mean"].grad.abs().sum() > 0


def test_published_losses_see_scaled_values_and_structure_does_not():
    mean, target = CASES["random"]()
    var = torch.rand(SHAPE, generator=torch.Generator().manual_seed(9)) * 0.01 + 1e-3
    output = {"mean": mean, "var": var}
    for name, power in (("l1", 1), ("l2", 2)):
        scaled, _ = build_loss(LossConfig(name=name), SCALE)(output, target)
        plain, _ = build_loss(LossConfig(name=name), 1.0)(output, target)
        assert float(scaled) == pytest.approx(SCALE**power * float(plain), rel=1e-6)
    gnll, _ = build_loss(LossConfig(name="GNLL"), SCALE)(output, target)
    by_hand = gaussian_nll(mean * SCALE, target * SCALE, var * SCALE**2, 1e-8)
    assert float(gnll) == pytest.approx(float(by_hand), rel=1e-6)
    # GNLL of scaled values = GNLL of [0, 1] values + log(scale_by)
    plain, _ = build_loss(LossConfig(name="GNLL"), 1.0)(output, target)
    assert float(gnll) == pytest.approx(float(plain) + math.log(SCALE), rel=1e-5)
    structure = LossConfig(name="structure")
    assert float(build_loss(structure, SCALE)(output, target)[0]) == float(build_loss(structure, 1.0)(output, target)[0])


def test_mgnll_is_the_per_pixel_nll_of_the_13_bands():
    generator = torch.Generator().manual_seed(4)
    mean, target = torch.rand(SHAPE, generator=generator, dtype=torch.float64), torch.rand(
        SHAPE, generator=generator, dtype=torch.float64)
    var = torch.rand(SHAPE, generator=generator, dtype=torch.float64) * 0.05
    var[0, 0] = 1e-7  # below the floor: both must floor it the same way
    weight = torch.rand(SHAPE[0], 1, *SHAPE[2:], generator=generator, dtype=torch.float64)
    for w in (None, weight):
        gnll = gaussian_nll(mean, target, var, 1e-4, w)
        mgnll = multivariate_gaussian_nll(mean, target, var, "diag", 1e-4, w)
        torch.testing.assert_close(mgnll, SHAPE[1] * gnll, rtol=1e-13, atol=0)  # a sum over bands, not a mean
    # By hand for one pixel with torch.distributions
    distribution = torch.distributions.MultivariateNormal(mean[1, :, 3, 4], torch.diag(var[1, :, 3, 4]))
    single = multivariate_gaussian_nll(mean[1:2, :, 3:4, 4:5], target[1:2, :, 3:4, 4:5], var[1:2, :, 3:4, 4:5],
                                       "diag", 1e-8)
    torch.testing.assert_close(single, -distribution.log_prob(target[1, :, 3, 4]))
    # the published floor of the squared Mahalanobis distance: a perfect prediction still counts 1e-9
    exact = multivariate_gaussian_nll(mean[:1, :, :1, :1], mean[:1, :, :1, :1], var[:1, :, :1, :1], "diag", 1e-4)
    log_det = torch.log(var[0, :, 0, 0].clamp(min=1e-4)).sum()
    torch.testing.assert_close(exact, 0.5 * (13 * math.log(2 * math.pi) + log_det + 1e-9))


def test_mgnll_is_independent_of_the_batch():
    """Unlike the published MGNLL, whose log-determinant is summed over the batch."""
    generator = torch.Generator().manual_seed(8)
    mean, target = torch.rand(SHAPE, generator=generator), torch.rand(SHAPE, generator=generator)
    var = torch.rand(SHAPE, generator=generator) * 0.05 + 1e-3
    loss = build_loss(LossConfig(name="MGNLL", covmode="diag"), SCALE)
    both, _ = loss({"mean": mean, "var": var}, target)
    first, _ = loss({"mean": mean[:1], "var": var[:1]}, target[:1])
    second, _ = loss({"mean": mean[1:], "var": var[1:]}, target[1:])
    assert float(both) == pytest.approx((float(first) + float(second)) / 2, rel=1e-6)


def test_gnll_is_lower_when_variance_matches_the_squared_error():
    generator = torch.Generator().manual_seed(6)
    target = torch.rand(SHAPE, generator=generator) * 0.5
    error = 0.05 + 0.2 * torch.rand(SHAPE, generator=generator)
    mean = target + error
    loss = build_loss(LossConfig(name="GNLL"), SCALE)
    matched, _ = loss({"mean": mean, "var": error**2}, target)
    for factor in (0.25, 4.0):
        worse, _ = loss({"mean": mean, "var": error**2 * factor}, target)
        assert matched < worse
    constant, _ = loss({"mean": mean, "var": torch.full(SHAPE, float((error**2).mean()))}, target)
    assert matched < constant


def test_structure_loss_term_only_with_structure_output():
    cfg = LossConfig(name="structure")
    mean, target = CASES["random"]()
    loss = build_loss(cfg, SCALE)
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


def test_structure_loss_reuses_the_benchmark_ssim_and_weights_its_terms():
    mean, target = CASES["random"]()
    only_ssim = LossConfig(name="structure", w_l1=0, w_grad=0, w_struct=0, w_ssim=1)
    total, parts = build_loss(only_ssim, SCALE)({"mean": mean}, target)
    assert set(parts) == {"one_minus_ssim", "total"}
    assert float(total) == pytest.approx(1 - float(ssim_map(mean, target).mean()), rel=1e-6)
    # The gradient term sees edges: a shifted copy has the same L1 to a flat image but not the same gradients.
    flat = torch.full(SHAPE, 0.5)
    stripes = flat.clone()
    stripes[..., ::2] += 0.1
    only_grad = build_loss(LossConfig(name="structure", w_l1=0, w_grad=1, w_struct=0, w_ssim=0), SCALE)
    assert float(only_grad({"mean": flat + 0.1}, flat)[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(only_grad({"mean": stripes}, flat)[0]) > 0.05


def test_mask_weights_select_pixels():
    target = torch.zeros(SHAPE)
    mean = target.clone()
    mean[..., :4] = 0.3  # wrong only in the first 4 columns
    weight = torch.ones(SHAPE[0], *SHAPE[2:])
    weight[..., :4] = 0
    for name in ("l1", "l2"):
        loss = build_loss(LossConfig(name=name), 1.0)
        assert float(loss({"mean": mean}, target, weight)[0]) == 0
        assert float(loss({"mean": mean}, target, 1 - weight)[0]) == pytest.approx(0.3 if name == "l1" else 0.09)
        assert float(loss({"mean": mean}, target)[0]) > 0
    all_zero, _ = build_loss(LossConfig(name="structure"), 1.0)({"mean": mean}, target,
                                                                 torch.zeros(SHAPE[0], *SHAPE[2:]))
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
    for name in ("l1", "l2", "ml", "structure"):
        assert variance_mode(LossConfig(name=name)) is None
    assert set(LOSS_NAMES) == {"l1", "l2", "ml", "structure", "GNLL", "MGNLL"}
    bogus = LossConfig.model_construct(name="focal", covmode="diag", var_floor=1e-4)
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        build_loss(bogus, SCALE)
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        variance_mode(bogus)


def test_probabilistic_loss_without_variance_says_what_to_do():
    mean, target = CASES["random"]()
    with pytest.raises(ValueError, match="variance mode 'diag'"):
        build_loss(LossConfig(name="GNLL"), SCALE)({"mean": mean}, target)
    with pytest.raises(ValueError, match="does not fit target"):
        build_loss(LossConfig(name="GNLL"), SCALE)({"mean": mean, "var": torch.ones(2, 5, 12, 12)}, target)


def test_ml_is_the_published_formula():
    mean, target = CASES["random"]()
    sar_mask = torch.rand(SHAPE[0], 1, *SHAPE[2:], generator=torch.Generator().manual_seed(11))
    total, parts = build_loss(LossConfig(name="ml"), SCALE)({"mean": mean, "sar_mask": sar_mask}, target)
    l1 = (SCALE * (mean - target)).abs().mean()
    band_mean = (SCALE * target).mean(dim=1).flatten(1)
    r = [float(torch.corrcoef(torch.stack((sar_mask[i].flatten(), band_mean[i])))[0, 1]) for i in range(SHAPE[0])]
    expected = 0.9 * float(l1) + 0.001 * (1 - sum(r) / len(r))
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert parts["l1"] == pytest.approx(float(l1), rel=1e-6)
    assert parts["one_minus_pearson"] == pytest.approx(1 - sum(r) / len(r), rel=1e-4)
    # a mask that is an affine function of the band mean correlates perfectly
    perfect = (0.1 + 0.05 * target.mean(dim=1, keepdim=True))
    _, parts = build_loss(LossConfig(name="ml"), SCALE)({"mean": mean, "sar_mask": perfect}, target)
    assert parts["one_minus_pearson"] == pytest.approx(0.0, abs=1e-6)


def test_pearson_uses_the_published_eps_convention():
    a = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    b = torch.tensor([[2.0, 4.0, 7.0], [1.0, 2.0, 3.0]])
    r = pearson_correlation(a, b)
    assert float(r[0]) == pytest.approx(float(torch.corrcoef(torch.stack((a[0], b[0])))[0, 1]), rel=1e-6)
    assert float(r[1]) == 0.0  # a constant row: 0 / (0 + eps), not NaN


def test_ml_without_a_structure_mask_names_the_model_and_loss_to_use():
    mean, target = CASES["random"]()
    loss = build_loss(LossConfig(name="ml"), SCALE)
    with pytest.raises(ValueError, match="only multisarv2 \\(alias sscr\\) outputs.*uncrtaints.*loss.name to structure"):
        loss.check_outputs({"mean", "var"}, "uncrtaints")
    with pytest.raises(ValueError, match="'sar_mask' that only multisarv2"):
        loss({"mean": mean, "structure": mean[:, :1]}, target)
