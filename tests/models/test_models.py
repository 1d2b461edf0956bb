"""Every backbone: shapes, ranges, gradients, inputs it refuses, and each design's own promises."""

from __future__ import annotations

import pytest
import torch

from sscr.bands import CLEAR_LAND_TOA, S2_BANDS
from sscr.models import build_model, model_cost
from sscr.models.blocks import VAR_FLOOR
from sscr.models.sscr_lite import isolated_detections

BACKBONES = ["multisarv2", "sscr_lite", "uncrtaints", "utae", "unet", "mask_unet"]
PUBLISHED = ["uncrtaints", "multisarv2"]
PUBLISHED_UNETS = ["unet", "utae"]
SIZE = 64
# The published networks work at full resolution with 128 channels (3.4 GFLOPs per 64 x 64
# image): the head / SAR / variance combinations run them at their structure but narrower, and
# test_published_default_widths runs their real widths once.
FAST = {name: {"encoder_widths": [16], "decoder_widths": [16] * 2} for name in PUBLISHED}
FAST.update({name: {"encoder_widths": [8, 16], "decoder_widths": [8, 16]} for name in PUBLISHED_UNETS})
EXTRA = {"sscr_lite": {"structure"}, "multisarv2": {"sar_mask"}}


def make_batch(batch: int = 2, size: int = SIZE, steps: int | None = None, seed: int = 0) -> dict:
    """Random cloudy / SAR / mask tensors in [0, 1]; a time axis when ``steps`` is given."""
    gen = torch.Generator().manual_seed(seed)
    lead = (batch,) if steps is None else (batch, steps)
    return {
        "cloudy": torch.rand(*lead, 13, size, size, generator=gen),
        "sar": torch.rand(*lead, 2, size, size, generator=gen),
        "mask": (torch.rand(*lead, 1, size, size, generator=gen) > 0.5).float(),
    }


def no_grad_expected(name: str) -> tuple[str, ...]:
    """Prefixes of the parameters a forward legitimately leaves without gradient."""
    # MultiSARv2's edge branch runs in training mode but its output is unused, as published
    return ("sar_edge_conv.", "sar_in_conv2.", "sar_in_block.") if name == "multisarv2" else ()


@pytest.mark.parametrize("variance", [None, "diag", "iso"], ids=["det", "diag", "iso"])
@pytest.mark.parametrize(("name", "use_sar"), [
    (name, use_sar) for name in BACKBONES for use_sar in (True, False)
    if use_sar or name != "multisarv2"  # it needs SAR: test_multisarv2_refuses_what_the_published_branch_cannot_do
])
def test_forward_backward(name, variance, use_sar):
    torch.manual_seed(0)
    model = build_model(name, variance=variance, use_sar=use_sar, **FAST.get(name, {}))
    batch = make_batch()
    out = model(batch["cloudy"], batch["sar"] if use_sar else None, batch["mask"])

    expected_keys = {"mean"} | ({"var"} if variance else set()) | EXTRA.get(name, set())
    assert set(out) == expected_keys == model.output_keys
    assert out["mean"].shape == (2, 13, SIZE, SIZE)
    assert 0.0 <= out["mean"].min() and out["mean"].max() <= 1.0
    if variance:
        assert out["var"].shape == (2, 13 if variance == "diag" else 1, SIZE, SIZE)
        # the published U-Net's variance is a plain softplus (no floor); the losses clamp it
        assert out["var"].min() >= (0.0 if name in PUBLISHED_UNETS else VAR_FLOOR)
    for key in EXTRA.get(name, ()):
        assert out[key].shape == (2, 1, SIZE, SIZE)
        assert 0.0 <= out[key].min() and out[key].max() <= 1.0

    # a loss touching every output, with the variance in it as a Gaussian NLL would
    target = torch.rand_like(out["mean"])
    loss = (out["mean"] - target).abs().mean()
    if variance:
        loss = loss + (((out["mean"] - target) ** 2) / out["var"] + out["var"].log()).mean()
    for key in EXTRA.get(name, ()):
        loss = loss + out[key].mean()
    loss.backward()

    skip = no_grad_expected(name)
    missing = [n for n, p in model.named_parameters() if p.grad is None and not n.startswith(skip)]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_default_widths(name):
    model = build_model(name, variance="diag").eval()
    assert len(model.in_block) == 1 and len(model.out_block) == 5 and model.config["encoder_widths"] == [128]
    assert model.use_mask is False and model.config["use_mask"] is False
    batch = make_batch(size=32)
    with torch.no_grad():
        out = model(batch["cloudy"], batch["sar"])
    assert out["mean"].shape == out["var"].shape == (2, 13, 32, 32)
    assert 0.0 <= out["mean"].min() and out["mean"].max() <= 1.0
    # variance = (softplus + 1e-3) / scale_by**2 in [0, 1]^2 units
    assert out["var"].min() >= 1e-3 / 10.0**2


@pytest.mark.parametrize("name", ["sscr_lite", "mask_unet", *PUBLISHED, *PUBLISHED_UNETS])
def test_mono_temporal_models_refuse_time_series(name):
    model = build_model(name, **FAST.get(name, {}))
    with pytest.raises(ValueError, match="mono-temporal"):
        model(**make_batch(steps=3, size=16))


@pytest.mark.parametrize(("name", "multiple"), [("sscr_lite", 4), ("mask_unet", 8), ("unet", 8), ("utae", 8)])
def test_size_constraint_is_a_clear_error(name, multiple):
    model = build_model(name)
    assert model.size_multiple == multiple
    batch = make_batch(size=multiple * 3 + 2)
    with pytest.raises(ValueError, match=f"multiples of {multiple}"):
        model(**batch)


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_networks_take_any_size(name):
    model = build_model(name, **FAST[name])
    out = model(**make_batch(size=30))
    assert out["mean"].shape == (2, 13, 30, 30)


@pytest.mark.parametrize("name", BACKBONES)
def test_missing_sar_is_refused_and_ignored_without_sar(name):
    with pytest.raises(ValueError, match="use_sar=True"):
        build_model(name, **FAST.get(name, {}))(make_batch(size=16)["cloudy"])
    if name == "multisarv2":
        return  # needs SAR: test_multisarv2_refuses_what_the_published_branch_cannot_do
    model = build_model(name, use_sar=False, **FAST.get(name, {})).eval()
    batch = make_batch(size=16)
    with torch.no_grad():
        with_sar = model(batch["cloudy"], batch["sar"], batch["mask"])["mean"]
        without = model(batch["cloudy"], None, batch["mask"])["mean"]
    torch.testing.assert_close(with_sar, without)


def test_mask_may_be_2d_per_sample():
    model = build_model("mask_unet").eval()
    batch = make_batch(size=16)
    with torch.no_grad():
        a = model(batch["cloudy"], batch["sar"], batch["mask"])["mean"]
        b = model(batch["cloudy"], batch["sar"], batch["mask"][:, 0])["mean"]
    torch.testing.assert_close(a, b)


def test_inputs_are_multiplied_by_scale_by():
    seen = {}

    def record(module, args, output):
        seen["input"] = args[0]

    model = build_model("mask_unet", scale_by=7.0, use_mask=False)
    model.stem.register_forward_hook(record)
    batch = make_batch(size=16)
    model(batch["cloudy"], batch["sar"])
    torch.testing.assert_close(seen["input"], 7.0 * torch.cat((batch["cloudy"], batch["sar"]), 1))


def _gate_of(model, batch):
    """The output gate the model computes on ``batch`` (hooked on its 1x1 conv)."""
    seen = {}
    handle = model.blend.register_forward_hook(lambda module, args, output: seen.update(gate=torch.sigmoid(output)))
    with torch.no_grad():
        out = model(**batch)
    handle.remove()
    return out, seen["gate"]


def test_sscr_lite_gate_starts_steep_in_the_cloud_probability():
    torch.manual_seed(0)
    model = build_model("sscr_lite", variance="diag").eval()
    batch = make_batch()
    batch["mask"] = torch.linspace(0, 1, SIZE).expand(2, 1, SIZE, SIZE).contiguous()  # every probability
    _, gate = _gate_of(model, batch)
    near = torch.nn.functional.max_pool2d(batch["mask"], 9, stride=1, padding=4)  # the highest probability within 4 px
    expected = torch.sigmoid(12 * (batch["mask"] - 0.3) + 6 * (near - 0.6))
    torch.testing.assert_close(gate, expected, atol=0.05, rtol=0)
    assert gate[..., 0].max() < 0.08 and gate[..., -1].min() > 0.99  # clear: kept; cloud: replaced
    # a blurred cloud edge at probability 0.5 is already replaced almost entirely: no halo of cloud kept
    assert gate[..., SIZE // 2].min() > 0.85


def test_sscr_lite_gate_opens_wider_near_a_cloud_than_far_from_it():
    # the haze beyond a cloud's 0.5 contour: at the same low probability, a pixel 3 px from a cloud body starts
    # with a far more open gate than one far from every cloud (no pale rim of blended haze)
    torch.manual_seed(0)
    model = build_model("sscr_lite").eval()
    batch = make_batch()
    mask = torch.zeros(2, 1, SIZE, SIZE)
    mask[..., :, : SIZE // 4] = 1.0  # a cloud over the left quarter
    mask[..., :, SIZE // 4:] = 0.05  # a faint skirt everywhere else
    batch["mask"] = mask
    _, gate = _gate_of(model, batch)
    beside, far = gate[..., SIZE // 4 + 3], gate[..., -1]
    assert beside.min() > 5 * far.max() and far.max() < 0.01


def test_sscr_lite_starts_from_the_clear_land_spectrum():
    torch.manual_seed(0)
    model = build_model("sscr_lite").eval()
    batch = make_batch()
    with torch.no_grad():
        cloudy = model(batch["cloudy"], batch["sar"], torch.ones_like(batch["mask"]))["mean"]
    land = torch.tensor([CLEAR_LAND_TOA[band] for band in S2_BANDS])
    # under clouds an untrained model paints land (red edge, NIR plateau), not a flat 0.5 in every band
    torch.testing.assert_close(cloudy.mean(dim=(0, 2, 3)), land, atol=0.02, rtol=0)
    assert (cloudy - batch["cloudy"]).abs().mean() > 0.05


def test_sscr_lite_keeps_the_input_on_isolated_detections():
    torch.manual_seed(0)
    model = build_model("sscr_lite").eval()
    batch = make_batch(batch=1)
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 8:30, 8:30] = 1.0  # a cloud body
    mask[..., 50:52, 50:52] = 0.9  # a 2 x 2 px detection far from it (a bright roof)
    mask[..., 49:53, 49] = 0.2  # ... with a blurred skirt
    batch["mask"] = mask
    out, gate = _gate_of(model, batch)
    kept = isolated_detections(mask)
    assert kept[..., 50:52, 50:52].all() and kept[..., 49:53, 49].all() and not kept[..., 8:30, 8:30].any()
    where = kept.expand_as(batch["cloudy"])
    torch.testing.assert_close(out["mean"][where], batch["cloudy"][where], atol=0, rtol=0)
    assert (out["mean"][..., 10:28, 10:28] - batch["cloudy"][..., 10:28, 10:28]).abs().mean() > 0.05
    assert gate[..., 50, 50] > 0.9  # the learned gate alone would have replaced the roof


def test_sscr_lite_keeps_the_input_where_the_cloud_probability_is_zero():
    torch.manual_seed(0)
    model = build_model("sscr_lite").eval()
    batch = make_batch(batch=1)
    batch["mask"] = torch.zeros(1, 1, SIZE, SIZE)
    batch["mask"][..., :, SIZE // 2:] = 0.02  # not quite zero beside a cloud body: the learned gate decides there
    batch["mask"][..., 8:24, SIZE // 2 + 8:SIZE // 2 + 24] = 1.0
    out, gate = _gate_of(model, batch)
    left = (slice(None), slice(None), slice(None), slice(0, SIZE // 2))
    torch.testing.assert_close(out["mean"][left], batch["cloudy"][left], atol=0, rtol=0)  # a clear mask: kept
    assert gate[left].min() > 0  # ... though the learned gate alone would have mixed in a little
    right = (slice(None), slice(None), slice(None), slice(SIZE // 2, None))
    skirt = (slice(None), slice(None), slice(8, 24), slice(SIZE // 2 + 4, SIZE // 2 + 8))  # p 0.02 next to it
    assert (out["mean"][skirt] != batch["cloudy"][skirt]).all()
    assert not torch.equal(out["mean"][right], batch["cloudy"][right])


def test_isolated_detections_are_narrow_and_away_from_cloud_bodies():
    mask = torch.zeros(1, 1, 40, 40)
    mask[..., 5:15, 5:15] = 0.8  # body
    mask[..., 5:15, 15:17] = 0.7  # a 2 px wide wisp attached to it: part of the cloud
    mask[..., 5, 19] = 0.6  # 1 px, 4 px from the body: near it, not isolated
    mask[..., 30, 30] = 0.6  # 1 px, far away: isolated
    mask[..., 30, 31] = 0.3  # its skirt (below 0.5): isolated with it
    mask[..., 0:3, 37:40] = 0.9  # a 3 x 3 px detection in the corner survives the opening: a body
    kept = isolated_detections(mask)
    assert kept.sum() == 2 and kept[0, 0, 30, 30] and kept[0, 0, 30, 31]
    assert not isolated_detections(torch.ones(1, 1, 16, 16)).any()
    assert not isolated_detections(torch.zeros(1, 1, 16, 16)).any()


def test_sscr_lite_missing_mask_means_all_cloudy():
    torch.manual_seed(0)
    model = build_model("sscr_lite").eval()
    batch = make_batch()
    with torch.no_grad():
        unknown = model(batch["cloudy"], batch["sar"])["mean"]
        cloudy = model(batch["cloudy"], batch["sar"], torch.ones_like(batch["mask"]))["mean"]
    torch.testing.assert_close(unknown, cloudy)


def test_sscr_lite_without_mask_learns_its_blend_gate():
    torch.manual_seed(0)
    model = build_model("sscr_lite", use_mask=False)
    assert model.blend.in_channels == model.heads.conv.in_channels  # the decoder features alone
    batch = make_batch()
    out = model(batch["cloudy"], batch["sar"])
    out["mean"].mean().backward()
    assert model.blend.weight.grad.abs().sum() > 0


def test_sscr_lite_structure_reads_sar_unless_disabled():
    torch.manual_seed(0)
    batch = make_batch()
    model = build_model("sscr_lite").eval()
    other_sar = torch.rand_like(batch["sar"])
    with torch.no_grad():
        a = model(**batch)["structure"]
        b = model(batch["cloudy"], other_sar, batch["mask"])["structure"]
        c = model(batch["cloudy"] * 0.5, batch["sar"], batch["mask"])["structure"]
    assert (a - b).abs().max() > 1e-4  # the structure map depends on SAR ...
    torch.testing.assert_close(a, c)  # ... and only on SAR
    optical_only = build_model("sscr_lite", use_sar=False)
    assert not hasattr(optical_only, "sar") and not hasattr(optical_only, "fusion")


def test_sscr_lite_costs_a_quarter_of_the_published_networks():
    lite = model_cost(build_model("sscr_lite"), 256, 256, batch=1)
    for name in PUBLISHED:
        published = model_cost(build_model(name), 256, 256, batch=1)
        assert 0 < lite["flops"] <= 0.25 * published["flops"]


def test_model_cost_scales_with_batch_and_pixels():
    model = build_model("sscr_lite")
    base = model_cost(model, 64, 64, batch=1)
    assert model_cost(model, 64, 64, batch=2)["flops"] == pytest.approx(2 * base["flops"], rel=1e-6)
    # linear in pixels: low-resolution attention keys live on a fixed grid
    assert model_cost(model, 128, 128)["flops"] == pytest.approx(4 * base["flops"], rel=0.02)
    assert next(model.parameters()).device.type == "cpu"  # the meta copy left the model alone


@pytest.mark.parametrize("name", ["uncrtaints", "unet"])
def test_published_networks_stack_sar_first_and_scale_it(name):
    seen = {}
    model = build_model(name, scale_by=7.0, **FAST[name])
    model.in_conv.register_forward_hook(lambda module, args, output: seen.update(input=args[0]))
    batch = make_batch(size=16)
    model(batch["cloudy"], batch["sar"], batch["mask"])  # the mask is ignored: the network takes none
    torch.testing.assert_close(seen["input"], 7.0 * torch.cat((batch["sar"], batch["cloudy"]), 1))
    optical = build_model(name, use_sar=False, **FAST[name])
    assert optical.in_conv.conv.conv[0].in_channels == 13


@pytest.mark.parametrize("name", [*PUBLISHED, *PUBLISHED_UNETS])
def test_published_networks_refuse_a_mask_input(name):
    with pytest.raises(ValueError, match="takes no cloud mask.*model.use_mask"):
        build_model(name, use_mask=True)
    assert build_model(name, use_mask=False, **FAST[name]).use_mask is False


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_networks_keep_one_width(name):
    with pytest.raises(ValueError, match="model.encoder_widths and model.decoder_widths must repeat one number"):
        build_model(name, encoder_widths=[16, 32], decoder_widths=[32])
    with pytest.raises(ValueError, match="must repeat one number"):
        build_model(name, encoder_widths=[16], decoder_widths=[16, 32])
    model = build_model(name, encoder_widths=[16, 16], decoder_widths=[16] * 3)
    assert len(model.in_block) == 2 and len(model.out_block) == 3


def test_multisarv2_refuses_what_the_published_branch_cannot_do():
    with pytest.raises(ValueError, match="needs SAR.*model.use_sar.*uncrtaints"):
        build_model("multisarv2", use_sar=False)
    with pytest.raises(ValueError, match="MBConv blocks only.*model.block_type"):
        build_model("multisarv2", block_type="residual")
    with pytest.raises(ValueError, match="width of at least 8"):
        build_model("multisarv2", encoder_widths=[4], decoder_widths=[4])
    assert build_model("uncrtaints", block_type="residual", **FAST["uncrtaints"]).in_block[0].conv1 is not None


def test_multisarv2_mask_beta_gates_the_encoder_features_with_the_structure_mask():
    torch.manual_seed(0)
    published = build_model("multisarv2", **FAST["multisarv2"]).eval()
    gated = build_model("multisarv2", mask_beta=0.5, **FAST["multisarv2"]).eval()
    gated.load_state_dict(published.state_dict())
    batch = make_batch(size=16)
    features = {}
    gated.in_block[-1].register_forward_hook(lambda module, args, output: features.update(encoder=output))
    gated.out_block[0].register_forward_hook(lambda module, args, output: features.update(decoder_in=args[0]))
    with torch.no_grad():
        out = gated(batch["cloudy"], batch["sar"])
        reference = published(batch["cloudy"], batch["sar"])
    expected = 0.5 * features["encoder"] + 0.5 * features["encoder"] * out["sar_mask"]
    torch.testing.assert_close(features["decoder_in"], expected)
    torch.testing.assert_close(out["sar_mask"], reference["sar_mask"])
    assert (out["mean"] - reference["mean"]).abs().max() > 1e-4


def test_multisarv2_edge_branch_runs_in_training_mode_only():
    torch.manual_seed(0)
    model = build_model("multisarv2", **FAST["multisarv2"])
    batch = make_batch(size=16)
    edge_stats = model.sar_edge_conv.norm.running_mean
    model.eval()
    with torch.no_grad():
        model(batch["cloudy"], batch["sar"])
    assert torch.count_nonzero(edge_stats) == 0  # skipped: nothing of it can reach an output
    model.train()
    out = model(batch["cloudy"], batch["sar"])
    assert torch.count_nonzero(edge_stats) > 0  # run as published: its batch-norm statistics move
    (out["mean"].mean() + out["sar_mask"].mean()).backward()
    assert model.sar_edge_conv.conv_x.weight.grad is None  # ... and its output is never used
    assert model.mask_conv.weight.grad.abs().sum() > 0


def test_published_unet_and_utae_are_one_network_under_two_names():
    torch.manual_seed(0)
    unet = build_model("unet", **FAST["unet"]).eval()
    utae = build_model("utae", **FAST["utae"]).eval()
    assert list(unet.state_dict()) == list(utae.state_dict()) and utae.model_name == "utae"
    utae.load_state_dict(unet.state_dict(), strict=True)
    batch = make_batch(size=16)
    with torch.no_grad():
        assert torch.equal(unet(batch["cloudy"], batch["sar"])["mean"], utae(batch["cloudy"], batch["sar"])["mean"])


def test_published_unet_defaults_and_width_rules():
    model = build_model("unet")
    assert model.config["encoder_widths"] == [64, 64, 64, 128] and model.config["decoder_widths"] == [32, 32, 64, 128]
    assert len(model.down_blocks) == len(model.up_blocks) == 3 and model.size_multiple == 8
    with pytest.raises(ValueError, match="one decoder width per encoder width, the last ones equal"):
        build_model("unet", encoder_widths=[8, 16], decoder_widths=[8, 8])
    with pytest.raises(ValueError, match="one decoder width per encoder width"):
        build_model("utae", encoder_widths=[8, 16], decoder_widths=[16])


def test_published_unet_mean_is_a_sigmoid_not_times_scale_by():
    """As published: its mean tops out at 1 in scaled units, i.e. 1 / scale_by once divided back."""
    model = build_model("unet", scale_by=10.0, **FAST["unet"]).eval()
    with torch.no_grad():
        model.out_conv.conv.conv[0].bias.fill_(50.0)  # saturate the sigmoid
        out = model(**make_batch(size=16))
    torch.testing.assert_close(out["mean"], torch.full_like(out["mean"], 0.1))


def test_sscr_lite_trains_a_quarter_of_its_samples_without_sar_decided_per_sample():
    """S1 dropout lives in the training view, drawn from (seed, epoch, index) like the crops: the same samples
    lose their S1 whatever the batch or the number of DDP processes, and the crops and flips stay as they were."""
    from sscr.data.augment import TrainingView
    from sscr.models import sscr_lite
    from sscr.models._registry import model_class

    assert model_class("sscr_lite").train_sar_dropout == sscr_lite.SAR_DROPOUT == 0.25
    assert all(model_class(name).train_sar_dropout == 0.0 for name in ("uncrtaints", "multisarv2", "unet", "utae"))
    generator = torch.Generator().manual_seed(0)
    patches = [{"sar": torch.rand(2, 16, 16, generator=generator) + 0.1,
                "cloudy": torch.rand(13, 16, 16, generator=generator),
                "target": torch.rand(13, 16, 16, generator=generator),
                "mask": torch.rand(1, 16, 16, generator=generator)} for _ in range(400)]
    plain = TrainingView(patches, crop_size=8, seed=3)
    dropping = TrainingView(patches, crop_size=8, seed=3, sar_dropout=sscr_lite.SAR_DROPOUT)
    blanked = [bool((dropping[i]["sar"] == 0).all()) for i in range(len(patches))]
    assert abs(sum(blanked) / len(blanked) - sscr_lite.SAR_DROPOUT) < 0.06
    assert [bool((dropping[i]["sar"] == 0).all()) for i in range(len(patches))] == blanked  # reproducible
    for i in range(40):
        a, b = plain[i], dropping[i]
        assert all(torch.equal(a[key], b[key]) for key in ("cloudy", "target", "mask"))
        assert torch.equal(a["sar"], b["sar"]) != blanked[i]
    dropping.epoch = 1  # another epoch, other samples
    assert [bool((dropping[i]["sar"] == 0).all()) for i in range(len(patches))] != blanked
    with pytest.raises(ValueError, match="sar_dropout"):
        TrainingView(patches, crop_size=8, seed=3, sar_dropout=1.0)
