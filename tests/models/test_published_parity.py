"""``uncrtaints``, ``multisarv2`` and ``unet`` are the published networks, and the losses the published losses.

The references come from the published code itself (github.com/RSIR25/sscr), run by
``tools/published_reference.py`` at a tiny width and saved under
``tests/fixtures/published/``; these tests need only those files. Each case holds
the published initial weights, its eval- and train-mode outputs (scaled units), its
losses, and its weights after one Adam step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from sscr.config import LossConfig
from sscr.losses import build_loss
from sscr.models import build_model, model_cost

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "published"
CASES = ["uncrtaints_l1", "multisarv2_ml", "uncrtaints_gnll", "uncrtaints_iso", "unet_l2", "unet_gnll"]
FORWARD_TOL = {"rtol": 1e-5, "atol": 1e-5}
LOSS_REL_TOL = 1e-6
STEP_TOL = {"rtol": 0.0, "atol": 1e-5}
# our loss config for each published loss recorded in the fixtures
LOSSES = {
    "l1": LossConfig(name="l1"), "l2": LossConfig(name="l2"), "ml": LossConfig(name="ml"),
    "GNLL": LossConfig(name="GNLL"), "MGNLL_diag": LossConfig(name="MGNLL", covmode="diag"),
    "MGNLL_iso": LossConfig(name="MGNLL", covmode="iso"),
}


def load(name: str) -> dict[str, Any]:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


@pytest.fixture(scope="module")
def inputs() -> dict[str, Any]:
    return load("inputs")


def unpack(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A state dict from the tool's packed form (one flat tensor, keys, shapes, dtypes)."""
    out, offset = {}, 0
    for key, shape, dtype in zip(packed["keys"], packed["shapes"], packed["dtypes"], strict=True):
        size = math.prod(shape)
        out[key] = packed["values"][offset:offset + size].reshape(shape).to(getattr(torch, dtype))
        offset += size
    assert offset == packed["values"].numel()
    return out


def ours(case: dict[str, Any]) -> torch.nn.Module:
    """Our network with the case's settings and the published initial weights (loaded strictly)."""
    settings = dict(case["ours"])
    model = build_model(settings.pop("name"), scale_by=case["scale_by"], **settings)
    model.load_state_dict(unpack(case["state_init"]), strict=True)
    return model


def unscaled(outputs: dict[str, torch.Tensor], scale_by: float) -> dict[str, torch.Tensor]:
    """Published (scaled) outputs in our [0, 1] units, as our models return them."""
    out = dict(outputs)
    out["mean"] = outputs["mean"] / scale_by
    if "var" in outputs:
        out["var"] = outputs["var"] / scale_by**2
    return out


@pytest.mark.parametrize("name", CASES)
def test_published_state_dict_loads_strictly_and_our_init_draws_the_same_weights(name):
    case = load(name)
    published = unpack(case["state_init"])
    settings = dict(case["ours"])
    torch.manual_seed(case["seed"])  # the published build: seed, construct, weight_init
    model = build_model(settings.pop("name"), scale_by=case["scale_by"], **settings)
    assert list(model.state_dict()) == list(published)  # same keys, in the published order
    for key, value in model.state_dict().items():
        assert value.shape == published[key].shape, key
        assert torch.equal(value, published[key]), f"{key} differs from the published initialisation"
    model.load_state_dict(published, strict=True)


@pytest.mark.parametrize("name", CASES)
def test_forward_equals_the_published_forward(name, inputs):
    case = load(name)
    model = ours(case)
    network_input = model.network_input(inputs["cloudy"], inputs["sar"])
    torch.testing.assert_close(network_input, inputs["network_input"][:, 0], rtol=0, atol=0)  # S1 first, x10
    model.eval()
    with torch.no_grad():
        scaled = model.forward_scaled(inputs["network_input"])
        wrapped = model(inputs["cloudy"], inputs["sar"])
    assert set(scaled) == set(case["eval"])
    for key, reference in case["eval"].items():
        torch.testing.assert_close(scaled[key], reference, **FORWARD_TOL)
        torch.testing.assert_close(wrapped[key], unscaled(case["eval"], case["scale_by"])[key], **FORWARD_TOL)
    model.train()
    with torch.no_grad():
        scaled = model.forward_scaled(inputs["network_input"])
    for key, reference in case["train"].items():
        torch.testing.assert_close(scaled[key], reference, **FORWARD_TOL)


@pytest.mark.parametrize("name", ["unet_l2", "unet_gnll"])
def test_unet_treats_an_all_zero_sample_as_padding_as_published(name, inputs):
    """The published encoder gives a sample whose whole input is 0 zero features (``smart_forward``)."""
    case = load(name)
    model = ours(case).eval()
    padded = inputs["network_input"].clone()
    padded[1] = 0.0  # as tools/published_reference.py's padded_input
    with torch.no_grad():
        scaled = model.forward_scaled(padded)
        plain = model.forward_scaled(inputs["network_input"])
    for key, reference in case["eval_padded"].items():
        torch.testing.assert_close(scaled[key], reference, **FORWARD_TOL)
    torch.testing.assert_close(scaled["mean"][0], plain["mean"][0], **FORWARD_TOL)  # the other sample: untouched
    assert (scaled["mean"][1] - plain["mean"][1]).abs().max() > 1e-3  # zero features, not the features of zeros


@pytest.mark.parametrize("name", CASES)
def test_losses_equal_the_published_losses(name, inputs):
    case = load(name)
    target = inputs["target"]
    output = unscaled(case["train"], case["scale_by"])
    for loss_name, published in case["losses"].items():
        if loss_name.endswith("_batch1"):
            loss = build_loss(LOSSES[loss_name.removesuffix("_batch1")], case["scale_by"])
            value, _ = loss({key: value[:1] for key, value in output.items()}, target[:1])
        else:
            value, _ = build_loss(LOSSES[loss_name], case["scale_by"])(output, target)
        if loss_name.startswith("MGNLL") and not loss_name.endswith("_batch1"):
            continue  # at batch 2 the published MGNLL adds the whole batch's log-determinant: see below
        assert float(value) == pytest.approx(published, rel=LOSS_REL_TOL, abs=0), loss_name


@pytest.mark.parametrize("name", ["uncrtaints_gnll", "uncrtaints_iso"])
def test_published_mgnll_sums_the_log_determinant_over_the_batch(name, inputs):
    """Ours is per pixel; the published value at batch B adds (B - 1) / 2 times the mean log-determinant."""
    case = load(name)
    mode = "MGNLL_diag" if "MGNLL_diag" in case["losses"] else "MGNLL_iso"
    output = unscaled(case["train"], case["scale_by"])
    ours_value, _ = build_loss(LOSSES[mode], case["scale_by"])(output, inputs["target"])
    published = case["losses"][mode]
    batch = inputs["target"].shape[0]
    var = case["train"]["var"].expand_as(case["train"]["mean"]).double()  # scaled, above the 1e-8 floor
    mean_log_det = var.log().sum(dim=1).mean()
    assert abs(published - float(ours_value)) > 1e-3  # they do differ at batch 2 ...
    assert published == pytest.approx(float(ours_value) + 0.5 * (batch - 1) * float(mean_log_det), rel=1e-5)
    single, _ = build_loss(LOSSES[mode], case["scale_by"])(
        {key: value[:1] for key, value in output.items()}, inputs["target"][:1])
    assert float(single) == pytest.approx(case["losses"][f"{mode}_batch1"], rel=LOSS_REL_TOL)  # ... not at 1


# Some gradients are zero, computed as rounding noise (below 3e-6 in these cases) of either sign: a shift added by
# UnCRtainTS' decoder norm biases goes through a 1x1 convolution into a training-mode batch norm that
# subtracts it again; in the tiny U-Net, biases that feed only batch norms or group norms of one channel
# per group, and the corner taps of a strided 4x4 convolution on a 4 x 4 map. Adam's first step (about
# lr * sign(gradient)) moves such an element by up to lr either way in both codes; every other element,
# and every buffer, is compared exactly.
ROUNDING_NOISE = 1e-5


@pytest.mark.parametrize("name", CASES)
def test_one_adam_step_equals_the_published_step(name, inputs):
    case = load(name)
    model = ours(case).train()
    loss_fn = build_loss(LOSSES[case["step"].removesuffix("_batch1")], case["scale_by"])
    optimizer = torch.optim.Adam(model.parameters(), lr=case["lr"])
    output = model(inputs["cloudy"], inputs["sar"])
    batch = case["step_batch"]
    if batch != output["mean"].shape[0]:  # as the tool does: a second train-mode forward, on the first image
        output = model(inputs["cloudy"][:batch], inputs["sar"][:batch])
    loss, _ = loss_fn(output, inputs["target"][:batch])
    assert float(loss.detach()) == pytest.approx(case["step_loss"], rel=LOSS_REL_TOL)
    optimizer.zero_grad()
    loss.backward()
    gradients = {key: param.grad for key, param in model.named_parameters()}
    before = {key: value.clone() for key, value in model.state_dict().items()}
    optimizer.step()
    expected = unpack(case["state_after_step"])
    noisy, total = 0, 0
    for key, value in model.state_dict().items():
        gradient = gradients.get(key)
        noise = (gradient.abs() < ROUNDING_NOISE if gradient is not None
                 else torch.zeros_like(value, dtype=torch.bool))
        torch.testing.assert_close(value[~noise].to(expected[key].dtype), expected[key][~noise], **STEP_TOL, msg=key)
        assert torch.all((expected[key][noise] - before[key][noise]).abs() <= case["lr"] * 1.001), key
        noisy += int(noise.sum())
        total += value.numel()
    assert noisy <= 0.1 * total  # 6 % in unet_l2 (a 2 x 2 map at its lowest level), at most 1 % elsewhere


def test_multisarv2_predicts_exactly_what_uncrtaints_predicts_with_the_same_weights(inputs):
    case = load("multisarv2_ml")
    multisar = ours(case)
    settings = {key: value for key, value in case["ours"].items() if key != "name"}
    uncrtaints = build_model("uncrtaints", scale_by=case["scale_by"], **settings)
    shared = {key: value for key, value in multisar.state_dict().items() if key in uncrtaints.state_dict()}
    assert len(shared) == len(uncrtaints.state_dict())  # the prediction path has the same names
    uncrtaints.load_state_dict(shared, strict=True)
    for train in (False, True):
        multisar.train(train)
        uncrtaints.train(train)
        with torch.no_grad():
            a = multisar(inputs["cloudy"], inputs["sar"])["mean"]
            b = uncrtaints(inputs["cloudy"], inputs["sar"])["mean"]
        assert torch.equal(a, b)


def test_seed_settings_have_the_published_size_and_cost():
    uncrtaints, multisar = build_model("uncrtaints"), build_model("multisarv2")
    assert uncrtaints.config["encoder_widths"] == [128] and uncrtaints.config["decoder_widths"] == [128] * 5
    assert model_cost(uncrtaints)["params"] == 518_541
    assert model_cost(uncrtaints)["flops"] == 53_821_505_536  # 53.8 GFLOPs at 256 px
    assert model_cost(multisar)["params"] == 536_158
    assert model_cost(multisar, training=True)["flops"] == 55_704_752_128  # 55.7, the edge branch included
    assert model_cost(multisar)["flops"] == 54_446_458_880  # eval mode skips the unused edge branch


def test_published_initialisation_statistics():
    torch.manual_seed(0)
    model = build_model("multisarv2").requires_grad_(False)
    modules = list(model.modules())
    conv_biases = torch.cat([m.bias for m in modules if isinstance(m, torch.nn.Conv2d) and m.bias is not None])
    assert conv_biases.numel() > 150
    assert abs(float(conv_biases.mean())) < 0.2 and 0.8 < float(conv_biases.std()) < 1.2  # N(0, 1)
    batch_norms = [m for m in modules if isinstance(m, torch.nn.BatchNorm2d)]
    bn_weights = torch.cat([m.weight for m in batch_norms])
    assert abs(float(bn_weights.mean())) < 0.1 and 0.9 < float(bn_weights.std()) < 1.1  # N(0, 1)
    assert all(torch.all(m.bias == 0) for m in batch_norms)
    group_norms = [m for m in modules if isinstance(m, torch.nn.GroupNorm)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in group_norms)  # left at PyTorch's
    expand = model.out_block[0].conv.fn[0].weight  # 1x1 conv 128 -> 256: Xavier std sqrt(2 / (128 + 256))
    assert float(expand.std()) == pytest.approx(math.sqrt(2 / (128 + 256)), rel=0.05)
    squeeze = model.out_block[0].conv.fn[6].fc[0].weight  # Linear 256 -> 32
    assert float(squeeze.std()) == pytest.approx(math.sqrt(2 / (256 + 32)), rel=0.1)
    # the Scharr kernels are overwritten by the init, as in the published training script
    assert not torch.equal(model.sar_edge_conv.conv_x.weight[0, 0], torch.tensor(
        [[-3.0, 0.0, 3.0], [-10.0, 0.0, 10.0], [-3.0, 0.0, 3.0]]))
