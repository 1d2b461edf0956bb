"""Benchmark metrics: hand-worked values, scikit-image SSIM, masks, accumulation, UCE/AUCE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from sscr.metrics import (
    RING_WIDTH,
    MetricAccumulator,
    calibration_bins,
    cloud_metrics,
    cloud_ring,
    flatten_metrics,
    image_metrics,
    metric_maps,
    sam_map,
    shadow_region,
    ssim_map,
    uncertainty_calibration,
)


def _smooth_images(channels: int = 3, size: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured target and a noisy, slightly biased prediction, in [0, 1], float64."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(1, channels, size // 4, size // 4, generator=generator, dtype=torch.float64)
    target = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)[0]
    noise = 0.05 * torch.randn(target.shape, generator=generator, dtype=torch.float64)
    pred = (0.9 * target + 0.03 + noise).clamp(0, 1)
    return target, pred


def test_rmse_mae_psnr_by_hand():
    target = torch.full((1, 2, 2), 0.5)
    pred = torch.tensor([[[0.6, 0.5], [0.5, 0.4]]])
    result = image_metrics(target, pred)
    # squared errors 0.01, 0, 0, 0.01 -> MSE 0.005; |errors| sum 0.2 over 4 pixels
    assert result["RMSE"] == pytest.approx(math.sqrt(0.005), rel=1e-6)
    assert result["MAE"] == pytest.approx(0.05, rel=1e-6)
    assert result["PSNR"] == pytest.approx(-10 * math.log10(0.005), rel=1e-6)  # 23.0103 dB
    assert result["PSNR"] == pytest.approx(23.0103, abs=1e-4)


def test_ssim_matches_skimage_in_the_interior():
    target, pred = _smooth_images()
    ours = ssim_map(target[None], pred[None])[0].numpy()
    _, reference = structural_similarity(
        target.numpy(), pred.numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1, channel_axis=0, full=True,
    )
    assert reference.shape == ours.shape
    interior = (slice(None), slice(5, -5), slice(5, -5))
    np.testing.assert_allclose(ours[interior], reference[interior], rtol=0, atol=1e-9)
    # The borders use zero padding (benchmark), not skimage's reflection: they must differ somewhere.
    assert not np.allclose(ours[:, :5], reference[:, :5], atol=1e-6)
    # The reported SSIM is the mean of the full map, borders included.
    assert image_metrics(target, pred)["SSIM"] == pytest.approx(float(ours.mean()), rel=1e-12)


def test_ssim_borders_follow_the_zero_padded_2d_window():
    """The benchmark's pytorch_ssim: one 11 x 11 conv2d per band, zero padding 5, borders kept."""
    target, pred = _smooth_images(channels=3, size=20, seed=3)
    target, pred = target[:, :, :13], pred[:, :, :13]  # non-square on purpose
    offsets = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(offsets**2) / (2 * 1.5**2))
    window = (torch.outer(g, g) / torch.outer(g, g).sum()).expand(3, 1, 11, 11)

    def blur(image):
        return torch.nn.functional.conv2d(image[None], window, padding=5, groups=3)[0]

    mu_t, mu_p = blur(target), blur(pred)
    var_t, var_p = blur(target * target) - mu_t**2, blur(pred * pred) - mu_p**2
    cov = blur(target * pred) - mu_t * mu_p
    c1, c2 = 0.01**2, 0.03**2
    reference = ((2 * mu_t * mu_p + c1) * (2 * cov + c2)) / ((mu_t**2 + mu_p**2 + c1) * (var_t + var_p + c2))
    torch.testing.assert_close(ssim_map(target[None], pred[None])[0], reference, rtol=0, atol=1e-12)


def test_identical_images_are_perfect():
    target, _ = _smooth_images(channels=13, size=16)
    result = image_metrics(target, target)
    assert result["SSIM"] == pytest.approx(1.0, abs=1e-12)
    assert result["RMSE"] == 0 and result["MAE"] == 0 and result["SAM"] == pytest.approx(0.0, abs=1e-5)
    assert result["PSNR"] == math.inf


def test_sam_scaled_copy_is_zero_and_orthogonal_is_ninety():
    # float64 (image_metrics' precision): arccos near 1 costs ~0.02 degrees of float32 rounding
    spectrum = torch.linspace(0.05, 0.6, 13, dtype=torch.float64).view(1, 13, 1, 1)
    assert sam_map(spectrum, 0.5 * spectrum).item() == pytest.approx(0.0, abs=1e-5)
    assert image_metrics(spectrum[0].float(), 0.5 * spectrum[0].float())["SAM"] == pytest.approx(0.0, abs=1e-5)
    first = torch.zeros(1, 13, 1, 1)
    second = torch.zeros(1, 13, 1, 1)
    first[0, :6], second[0, 6:] = 0.3, 0.4
    assert sam_map(first, second).item() == pytest.approx(90.0, abs=1e-6)
    # Zero-norm convention: two zero spectra agree (0), zero against non-zero is 90.
    zero = torch.zeros(1, 13, 1, 1)
    assert sam_map(zero, zero).item() == 0.0
    assert sam_map(zero, spectrum).item() == pytest.approx(90.0)
    assert image_metrics(zero[0], zero[0])["SAM"] == 0.0


def test_sam_by_hand_on_two_bands():
    # 45 degrees between (1, 0) and (1, 1); 0 degrees between (1, 1) and (2, 2): mean 22.5
    target = torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]]])
    pred = torch.tensor([[[1.0, 0.5]], [[1.0, 0.5]]])
    assert image_metrics(target, pred)["SAM"] == pytest.approx(22.5, abs=1e-6)


def test_batch_matches_single_images_and_reduce_is_their_mean():
    images = [_smooth_images(channels=13, size=16, seed=seed) for seed in range(3)]
    target = torch.stack([t for t, _ in images])
    pred = torch.stack([p for _, p in images])
    batch = image_metrics(target, pred)
    singles = [image_metrics(t, p) for t, p in images]
    for key in ("RMSE", "MAE", "PSNR", "SAM", "SSIM"):
        assert batch[key] == pytest.approx([s[key] for s in singles], rel=1e-12)
    reduced = image_metrics(target, pred, reduce=True)
    for key in ("RMSE", "MAE", "PSNR", "SAM", "SSIM"):
        assert reduced[key] == pytest.approx(np.mean([s[key] for s in singles]), rel=1e-12)


def _cloud_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target 0.5 everywhere; prediction off by +0.2 exactly on the cloud (left 3 columns of 8)."""
    target = torch.full((13, 8, 8), 0.5, dtype=torch.float64)
    mask = torch.zeros(8, 8)
    mask[:, :3] = 1
    pred = target + 0.2 * mask
    return target, pred, mask


def test_masked_metrics_inside_and_outside_clouds():
    target, pred, mask = _cloud_case()
    result = cloud_metrics(target, pred, mask)
    assert result["cloudy"]["RMSE"] == pytest.approx(0.2)
    assert result["cloudy"]["MAE"] == pytest.approx(0.2)
    assert result["cloudy"]["PSNR"] == pytest.approx(20 * math.log10(1 / 0.2))
    assert result["clear"]["RMSE"] == 0 and result["clear"]["PSNR"] == math.inf
    assert result["all"]["RMSE"] == pytest.approx(0.2 * math.sqrt(3 / 8))
    assert result["all"]["MAE"] == pytest.approx(0.2 * 3 / 8)
    # SSIM in a region = the full image's SSIM map averaged over that region's pixels.
    full_map = ssim_map(target[None], pred[None])[0].mean(0)
    assert result["cloudy"]["SSIM"] == pytest.approx(float(full_map[mask == 1].mean()), rel=1e-12)
    assert result["clear"]["SSIM"] == pytest.approx(float(full_map[mask == 0].mean()), rel=1e-12)
    assert result["cloudy"]["SSIM"] < result["clear"]["SSIM"]
    # cloud_metrics' regions are image_metrics with the mask or its complement.
    assert image_metrics(target, pred, mask=mask) == pytest.approx(result["cloudy"])
    assert image_metrics(target, pred, mask=1 - mask) == pytest.approx(result["clear"])


def test_masked_sam_only_counts_masked_pixels():
    target = torch.zeros(2, 1, 2)
    target[0] = 1.0
    pred = target.clone()
    pred[:, 0, 0] = torch.tensor([0.0, 1.0])  # pixel 0 orthogonal, pixel 1 exact
    mask = torch.tensor([[1.0, 0.0]])
    assert image_metrics(target, pred, mask=mask)["SAM"] == pytest.approx(90.0)
    assert image_metrics(target, pred, mask=1 - mask)["SAM"] == pytest.approx(0.0)
    assert image_metrics(target, pred)["SAM"] == pytest.approx(45.0)


def test_empty_mask_gives_nan_and_mask_shapes_agree():
    target, pred, mask = _cloud_case()
    empty = image_metrics(target, pred, mask=torch.zeros(8, 8))
    assert all(math.isnan(value) for value in empty.values())
    batch_t, batch_p = torch.stack([target, target]), torch.stack([pred, target])
    shapes = [mask, mask.expand(2, 8, 8), mask.expand(2, 8, 8)[:, None]]
    results = [image_metrics(batch_t, batch_p, mask=m) for m in shapes]
    assert results[0] == results[1] == results[2]
    assert results[0]["RMSE"] == pytest.approx([0.2, 0.0])
    with pytest.raises(ValueError, match="mask of shape"):
        image_metrics(batch_t, batch_p, mask=torch.zeros(3, 8, 8))


def test_accumulator_keeps_mean_finite_with_perfect_image():
    target, pred = _smooth_images(channels=13, size=16)
    accumulator = MetricAccumulator()
    accumulator.add(image_metrics(target, target), groups="perfect")
    accumulator.add(image_metrics(target, pred))
    mean = accumulator.mean()
    assert math.isfinite(mean["PSNR"])
    assert mean["PSNR"] == pytest.approx(image_metrics(target, pred)["PSNR"])
    assert mean["SSIM"] == pytest.approx((1 + image_metrics(target, pred)["SSIM"]) / 2)
    summary = accumulator.summary()
    assert summary["all"]["PSNR_n_inf"] == 1 and summary["all"]["n"] == 2
    assert summary["perfect"]["PSNR"] == math.inf and summary["perfect"]["n"] == 1


def test_accumulator_skips_nan_per_metric_and_groups():
    accumulator = MetricAccumulator()
    accumulator.add({"PSNR": math.nan, "SSIM": 0.5}, groups=["season=spring", "coverage=high"])
    accumulator.add({"PSNR": 30.0, "SSIM": 0.7}, groups=["season=spring"])
    accumulator.add({"PSNR": 20.0, "SSIM": 0.9}, groups=["season=fall"])
    assert accumulator.mean() == pytest.approx({"PSNR": 25.0, "SSIM": 0.7})
    assert accumulator.count() == {"PSNR": 2, "SSIM": 3}
    assert accumulator.mean("season=spring") == pytest.approx({"PSNR": 30.0, "SSIM": 0.6})
    assert math.isnan(accumulator.mean("coverage=high")["PSNR"])
    summary = accumulator.summary()
    assert list(summary) == ["all", "season=spring", "coverage=high", "season=fall"]
    assert summary["season=spring"]["n"] == 2 and summary["season=fall"]["SSIM"] == pytest.approx(0.9)


def test_accumulator_takes_cloud_metrics_batches_with_regions():
    target, pred, mask = _cloud_case()
    clear_image = torch.zeros(8, 8)
    batch = cloud_metrics(torch.stack([target, target]), torch.stack([pred, target]),
                          torch.stack([mask, clear_image]))
    accumulator = MetricAccumulator()
    accumulator.add_batch(batch, groups=["cloudy-bin", "clear-bin"])
    summary = accumulator.summary()["all"]
    # The clear image has no cloudy pixels: its cloudy metrics are NaN and skipped.
    assert summary["cloudy/n"] == 1 and summary["clear/n"] == 2
    assert summary["cloudy/RMSE"] == pytest.approx(0.2)
    assert summary["clear/PSNR_n_inf"] == 2 and math.isinf(summary["clear/PSNR"])
    assert flatten_metrics({"all": {"PSNR": 1.0}, "cloudy": {"PSNR": 2.0}}) == {"PSNR": 1.0, "cloudy/PSNR": 2.0}


def test_uce_auce_by_hand():
    # 2 bins over [1, 4]: edges linspace(1, 4, 2)[1:] = [4] -> bin 0 = var 1 (x3), bin 1 = var 4
    variance, squared_error = [1.0, 1.0, 1.0, 4.0], [1.0, 3.0, 2.0, 9.0]
    bins = calibration_bins(variance, squared_error, n_bins=2)
    assert bins["count"].tolist() == [3, 1]
    np.testing.assert_allclose(bins["rmv"], [1.0, 2.0])
    np.testing.assert_allclose(bins["rmse"], [math.sqrt(2.0), 3.0])
    result = uncertainty_calibration(variance, squared_error, n_bins=2)
    assert result["UCE"] == pytest.approx(0.75 * (math.sqrt(2) - 1) + 0.25 * 1.0)
    assert result["AUCE"] == pytest.approx(((math.sqrt(2) - 1) + 1.0) / 2)


def test_uce_default_bins_put_the_maximum_alone_in_the_last_bin():
    variance = np.linspace(0.0, 1.0, 101)
    bins = calibration_bins(variance, variance)
    assert len(bins["count"]) == 20 and bins["count"][-1] == 1 and bins["count"].sum() == 101


def test_calibrated_variance_scores_lower_than_miscalibrated():
    rng = np.random.default_rng(0)
    true_variance = rng.uniform(1e-4, 4e-3, size=400)
    # per-image MSE over 256 pixels drawn with the true variance
    squared_error = (rng.normal(size=(400, 256)) ** 2).mean(axis=1) * true_variance
    calibrated = uncertainty_calibration(true_variance, squared_error)
    overconfident = uncertainty_calibration(true_variance / 4, squared_error)
    underconfident = uncertainty_calibration(true_variance * 3, squared_error)
    for bad in (overconfident, underconfident):
        assert calibrated["UCE"] < bad["UCE"] / 3
        assert calibrated["AUCE"] < bad["AUCE"] / 3
    assert math.isnan(uncertainty_calibration([], [])["UCE"])


def test_variance_metrics_reach_the_accumulator_calibration():
    target, pred = _smooth_images(channels=13, size=16)
    error_sq = (target - pred) ** 2
    accumulator = MetricAccumulator()
    for scale, groups in ((1.0, "calibrated"), (5.0, "inflated")):
        for _ in range(2):
            row = image_metrics(target, pred, var=error_sq * scale + 1e-9)
            accumulator.add(row, groups=groups)
    assert image_metrics(target, pred, var=error_sq)["VAR"] == pytest.approx(
        image_metrics(target, pred)["RMSE"] ** 2, rel=1e-9)
    summary = accumulator.summary()
    assert summary["calibrated"]["UCE"] == pytest.approx(0.0, abs=1e-6)
    assert summary["inflated"]["UCE"] > 1e-3
    iso = metric_maps(target[None], pred[None], var=torch.full((1, 1, 16, 16), 0.01))["VAR"]
    assert torch.allclose(iso, torch.full_like(iso, 0.01))


def _shadowed_pair(size: int = 48):
    """A textured clear target; the cloudy image: a bright cloud (rows 4-14), its shadow (rows 30-40, x 0.4)
    and everywhere else the same ground 5 % darker (another date)."""
    target, _ = _smooth_images(channels=13, size=size)
    target = 0.1 + 0.3 * target
    cloudy = 0.95 * target
    cloudy[:, 4:14] = 0.6
    cloudy[:, 30:40, 10:30] = 0.4 * target[:, 30:40, 10:30]
    mask = torch.zeros(size, size)
    mask[4:14] = 1.0
    return target, cloudy, mask


def test_shadow_region_is_where_the_cloudy_image_is_darker_than_usual():
    target, cloudy, mask = _shadowed_pair()
    shadow = shadow_region(cloudy, target, mask)[0]
    truth = torch.zeros_like(shadow)
    truth[30:40, 10:30] = True
    assert torch.equal(shadow, truth)  # the 5 % darker date is not shadow, the cloud never is
    # a shadow the mask covers is still one (the region does not depend on the detector)
    covered = mask.clone()
    covered[30:40, 10:30] = 1.0
    assert torch.equal(shadow_region(cloudy, target, covered)[0], truth)
    # water (a dark target) is never shadow: its ratio is noise
    dark = target.clone()
    dark[:, 30:40, 10:30] = 0.02
    assert not shadow_region(0.4 * dark, dark, mask)[0][30:40, 10:30].any()


def test_cloud_ring_is_the_band_around_the_clouds():
    mask = torch.zeros(1, 40, 40)
    mask[0, 15:25, 15:25] = 0.9
    ring = cloud_ring(mask)[0]
    near = torch.zeros(40, 40, dtype=torch.bool)
    near[15 - RING_WIDTH:25 + RING_WIDTH, 15 - RING_WIDTH:25 + RING_WIDTH] = True
    near[15:25, 15:25] = False
    assert torch.equal(ring, near)


def test_cloud_metrics_score_shadows_and_ring_when_given_the_cloudy_input():
    target, cloudy, mask = _shadowed_pair()
    repaired = cloudy.clone()
    repaired[:, 30:40, 10:30] = target[:, 30:40, 10:30]  # the shadow repaired, the rest as the input
    model = cloud_metrics(target, repaired, mask, cloudy=cloudy)
    kept = cloud_metrics(target, cloudy, mask, cloudy=cloudy)
    assert set(model) == {"all", "cloudy", "clear", "shadow", "ring"}
    assert model["shadow"]["PSNR"] == math.inf and kept["shadow"]["PSNR"] < 20
    assert model["ring"]["PSNR"] == pytest.approx(kept["ring"]["PSNR"])  # the ring (rows 14-18) untouched
    assert set(cloud_metrics(target, cloudy, mask)) == {"all", "cloudy", "clear"}  # without it: as before
    # an image without shadow has NaN there, so a split's mean skips it
    assert math.isnan(cloud_metrics(target, target, mask, cloudy=target)["shadow"]["PSNR"])
