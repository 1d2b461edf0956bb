"""Every backbone: shapes, ranges, gradients, inputs it refuses, and SSCR's own promises."""

from __future__ import annotations

import pytest
import torch

from sscr.models import build_model, model_cost
from sscr.models.blocks import VAR_FLOOR

BACKBONES = ["sscr", "uncrtaints", "utae", "unet"]
SIZE = 64
# UnCRtainTS works at full resolution with 512 hidden channels (about 13 GFLOPs per 64 x 64
# image): the head / SAR / variance combinations run it at its structure but narrower, and
# test_uncrtaints_default_widths runs its real widths once.
FAST = {"uncrtaints": {"encoder_widths": [32], "decoder_widths": [32] * 5, "n_head": 4, "d_model": 32}}


def make_batch(batch: int = 2, size: int = SIZE, steps: int | None = None, seed: int = 0) -> dict:
    """Random cloudy / SAR / mask tensors in [0, 1]; a time axis when ``steps`` is given."""
    gen = torch.Generator().manual_seed(seed)
    lead = (batch,) if steps is None else (batch, steps)
    return {
        "cloudy": torch.rand(*lead, 13, size, size, generator=gen),
        "sar": torch.rand(*lead, 2, size, size, generator=gen),
        "mask": (torch.rand(*lead, 1, size, size, generator=gen) > 0.5).float(),
    }


def no_grad_expected(name: str, steps: int = 1) -> str | None:
    """Prefix of the parameters a forward legitimately leaves without gradient."""
    # UnCRtainTS skips its L-TAE for a single date (the paper's mono-temporal mode)
    return "temporal_encoder." if name == "uncrtaints" and steps == 1 else None


@pytest.mark.parametrize("use_sar", [True, False], ids=["sar", "nosar"])
@pytest.mark.parametrize("variance", [None, "diag", "iso"], ids=["det", "diag", "iso"])
@pytest.mark.parametrize("name", BACKBONES)
def test_forward_backward(name, variance, use_sar):
    torch.manual_seed(0)
    model = build_model(name, variance=variance, use_sar=use_sar, **FAST.get(name, {}))
    batch = make_batch()
    out = model(batch["cloudy"], batch["sar"] if use_sar else None, batch["mask"])

    expected_keys = {"mean"} | ({"var"} if variance else set()) | ({"structure"} if name == "sscr" else set())
    assert set(out) == expected_keys
    assert out["mean"].shape == (2, 13, SIZE, SIZE)
    assert 0.0 <= out["mean"].min() and out["mean"].max() <= 1.0
    if variance:
        assert out["var"].shape == (2, 13 if variance == "diag" else 1, SIZE, SIZE)
        assert out["var"].min() >= VAR_FLOOR
    if name == "sscr":
        assert out["structure"].shape == (2, 1, SIZE, SIZE)
        assert 0.0 <= out["structure"].min() and out["structure"].max() <= 1.0

    # a loss touching every output, with the variance in it as a Gaussian NLL would
    target = torch.rand_like(out["mean"])
    loss = (out["mean"] - target).abs().mean()
    if variance:
        loss = loss + (((out["mean"] - target) ** 2) / out["var"] + out["var"].log()).mean()
    if "structure" in out:
        loss = loss + out["structure"].mean()
    loss.backward()

    skip = no_grad_expected(name)
    missing = [n for n, p in model.named_parameters() if p.grad is None and not (skip and n.startswith(skip))]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.grad is not None)


def test_uncrtaints_default_widths():
    model = build_model("uncrtaints", variance="diag").eval()
    assert len(model.decoder) == 5 and model.config["encoder_widths"] == [128]
    with torch.no_grad():
        out = model(**make_batch())
    assert out["mean"].shape == out["var"].shape == (2, 13, SIZE, SIZE)
    assert 0.0 <= out["mean"].min() and out["mean"].max() <= 1.0 and out["var"].min() > 0


@pytest.mark.parametrize("steps", [1, 3])
def test_utae_time_series(steps):
    torch.manual_seed(0)
    model = build_model("utae", variance="diag", encoder_widths=[16, 16, 32], n_head=4, d_model=32)
    batch = make_batch(steps=steps)
    out = model(**batch)
    assert out["mean"].shape == (2, 13, SIZE, SIZE)
    assert out["var"].shape == (2, 13, SIZE, SIZE)
    out["mean"].mean().backward()
    query_grad = model.temporal_encoder.query.grad
    assert torch.isfinite(query_grad).all()
    # with one date the attention is constant (softmax over one step); with three it learns
    if steps == 1:
        assert torch.count_nonzero(query_grad) == 0
    else:
        assert query_grad.abs().sum() > 0


def test_utae_single_sar_frame_broadcast_over_time():
    torch.manual_seed(0)
    model = build_model("utae", encoder_widths=[16, 32], n_head=4, d_model=16).eval()
    batch = make_batch(steps=3)
    repeated = model(batch["cloudy"], batch["sar"][:, :1].expand(-1, 3, -1, -1, -1), batch["mask"])
    single = model(batch["cloudy"], batch["sar"][:, 0], batch["mask"])
    torch.testing.assert_close(single["mean"], repeated["mean"])


def test_uncrtaints_time_series_uses_its_temporal_encoder():
    torch.manual_seed(0)
    model = build_model("uncrtaints", encoder_widths=[32], decoder_widths=[32, 32], n_head=4, d_model=32)
    out = model(**make_batch(steps=3, size=32))
    assert out["mean"].shape == (2, 13, 32, 32)
    out["mean"].mean().backward()
    assert model.temporal_encoder.query.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["sscr", "unet"])
def test_mono_temporal_models_refuse_time_series(name):
    model = build_model(name)
    with pytest.raises(ValueError, match="mono-temporal"):
        model(**make_batch(steps=3, size=16))


@pytest.mark.parametrize(("name", "multiple"), [("sscr", 4), ("unet", 8), ("utae", 8)])
def test_size_constraint_is_a_clear_error(name, multiple):
    model = build_model(name)
    assert model.size_multiple == multiple
    batch = make_batch(size=multiple * 3 + 2)
    with pytest.raises(ValueError, match=f"multiples of {multiple}"):
        model(**batch)


def test_uncrtaints_takes_any_size():
    model = build_model("uncrtaints", encoder_widths=[16], decoder_widths=[16], n_head=4, d_model=16)
    out = model(**make_batch(size=30))
    assert out["mean"].shape == (2, 13, 30, 30)


@pytest.mark.parametrize("name", BACKBONES)
def test_missing_sar_is_refused_and_ignored_without_sar(name):
    with pytest.raises(ValueError, match="use_sar=True"):
        build_model(name)(make_batch(size=16)["cloudy"])
    model = build_model(name, use_sar=False).eval()
    batch = make_batch(size=16)
    with torch.no_grad():
        with_sar = model(batch["cloudy"], batch["sar"], batch["mask"])["mean"]
        without = model(batch["cloudy"], None, batch["mask"])["mean"]
    torch.testing.assert_close(with_sar, without)


def test_mask_may_be_2d_per_sample():
    model = build_model("unet").eval()
    batch = make_batch(size=16)
    with torch.no_grad():
        a = model(batch["cloudy"], batch["sar"], batch["mask"])["mean"]
        b = model(batch["cloudy"], batch["sar"], batch["mask"][:, 0])["mean"]
    torch.testing.assert_close(a, b)


def test_inputs_are_multiplied_by_scale_by():
    seen = {}

    def record(module, args, output):
        seen["input"] = args[0]

    model = build_model("unet", scale_by=7.0, use_mask=False)
    model.stem.register_forward_hook(record)
    batch = make_batch(size=16)
    model(batch["cloudy"], batch["sar"])
    torch.testing.assert_close(seen["input"], 7.0 * torch.cat((batch["cloudy"], batch["sar"]), 1))


def test_sscr_passes_clear_pixels_through():
    torch.manual_seed(0)
    model = build_model("sscr", variance="diag").eval()
    batch = make_batch()
    with torch.no_grad():
        clear = model(batch["cloudy"], batch["sar"], torch.zeros_like(batch["mask"]))
        cloudy = model(batch["cloudy"], batch["sar"], torch.ones_like(batch["mask"]))
        mixed = model(**batch)
    torch.testing.assert_close(clear["mean"], batch["cloudy"], atol=1e-6, rtol=0)
    # under clouds the network's prediction replaces the input
    assert (cloudy["mean"] - batch["cloudy"]).abs().mean() > 0.05
    clear_pixels = batch["mask"].expand_as(batch["cloudy"]) == 0
    torch.testing.assert_close(mixed["mean"][clear_pixels], batch["cloudy"][clear_pixels], atol=1e-6, rtol=0)


def test_sscr_missing_mask_means_all_cloudy():
    torch.manual_seed(0)
    model = build_model("sscr").eval()
    batch = make_batch()
    with torch.no_grad():
        unknown = model(batch["cloudy"], batch["sar"])["mean"]
        cloudy = model(batch["cloudy"], batch["sar"], torch.ones_like(batch["mask"]))["mean"]
    torch.testing.assert_close(unknown, cloudy)


def test_sscr_without_mask_learns_its_blend_gate():
    torch.manual_seed(0)
    model = build_model("sscr", use_mask=False)
    assert hasattr(model, "blend")
    batch = make_batch()
    out = model(batch["cloudy"], batch["sar"])
    out["mean"].mean().backward()
    assert model.blend.weight.grad.abs().sum() > 0


def test_sscr_structure_reads_sar_unless_disabled():
    torch.manual_seed(0)
    batch = make_batch()
    model = build_model("sscr").eval()
    other_sar = torch.rand_like(batch["sar"])
    with torch.no_grad():
        a = model(**batch)["structure"]
        b = model(batch["cloudy"], other_sar, batch["mask"])["structure"]
        c = model(batch["cloudy"] * 0.5, batch["sar"], batch["mask"])["structure"]
    assert (a - b).abs().max() > 1e-4  # the structure map depends on SAR ...
    torch.testing.assert_close(a, c)  # ... and only on SAR
    optical_only = build_model("sscr", use_sar=False)
    assert not hasattr(optical_only, "sar") and not hasattr(optical_only, "fusion")


def test_sscr_is_cheaper_than_uncrtaints():
    sscr = model_cost(build_model("sscr"), 256, 256, batch=1)
    uncrtaints = model_cost(build_model("uncrtaints"), 256, 256, batch=1)
    assert sscr["params"] < uncrtaints["params"]
    assert sscr["flops"] <= 0.5 * uncrtaints["flops"]
    assert sscr["flops"] > 0


def test_model_cost_scales_with_batch_and_pixels():
    model = build_model("sscr")
    base = model_cost(model, 64, 64, batch=1)
    assert model_cost(model, 64, 64, batch=2)["flops"] == pytest.approx(2 * base["flops"], rel=1e-6)
    # linear in pixels: low-resolution attention keys live on a fixed grid
    assert model_cost(model, 128, 128)["flops"] == pytest.approx(4 * base["flops"], rel=0.02)
    assert next(model.parameters()).device.type == "cpu"  # the meta copy left the model alone
