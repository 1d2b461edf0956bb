"""Building backbones by name: names, alias, errors, exact rebuild from ``config``, device choice."""

from __future__ import annotations

import json

import pytest
import torch

from sscr.config import ModelConfig
from sscr.models import (
    available_models,
    build_model,
    example_inputs,
    for_inference,
    model_cost,
    register_model,
    select_device,
)
from sscr.models._base import CloudRemovalModel
from sscr.models._registry import _MODELS
from sscr.models.sscr import SSCR


def test_available_models():
    assert available_models() == ["sscr", "uncrtaints", "unet", "utae"]


def test_seed_alias_builds_sscr():
    model = build_model("multisarv2")
    assert isinstance(model, SSCR)
    assert model.model_name == "sscr"


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet'.*sscr, uncrtaints, unet, utae"):
        build_model("resnet")


def test_unknown_keyword_is_named():
    with pytest.raises(TypeError, match="encoder_width\\b"):
        build_model("unet", encoder_width=[8, 16])


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("variance", "full", "variance must be one of"),
        ("block_type", "transformer", "block_type must be one of"),
        ("encoder_widths", [], "non-empty list"),
        ("scale_by", 0.0, "scale_by must be > 0"),
    ],
)
def test_bad_values_are_refused(key, value, match):
    with pytest.raises(ValueError, match=match):
        build_model("sscr", **{key: value})


def test_incompatible_heads_are_refused():
    with pytest.raises(ValueError, match="divisible by n_head"):
        build_model("utae", encoder_widths=[24, 24], n_head=16)
    with pytest.raises(ValueError, match="divisible by n_head"):
        build_model("sscr", encoder_widths=[16, 24], n_head=16)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("sscr", {}),
        ("sscr", {"variance": "iso", "use_sar": False, "block_type": "residual", "encoder_widths": [8, 16]}),
        ("sscr", {"use_mask": False, "n_head": 2, "d_model": 16, "encoder_widths": [8, 16, 16]}),
        ("uncrtaints", {"variance": "diag", "block_type": "residual"}),
        ("utae", {"variance": "diag", "use_mask": False}),
        ("unet", {"encoder_widths": [8, 16], "decoder_widths": [12, 16], "scale_by": 1.0}),
    ],
)
def test_config_round_trip(name, params):
    model = build_model(name, **params)
    for key, value in params.items():
        assert model.config[key] == value
    assert {"use_sar", "use_mask", "variance"} <= set(vars(model)) | set(dir(model))
    assert model.use_sar == model.config["use_sar"] and model.variance == model.config["variance"]
    config = json.loads(json.dumps(model.config))  # a checkpoint stores it as plain data
    rebuilt = build_model(name, **config)
    assert rebuilt.config == model.config
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    rebuilt.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("name", ["sscr", "uncrtaints", "utae", "unet", "multisarv2"])
def test_params_yaml_model_group_fits_every_backbone(name):
    group = ModelConfig(name=name, n_head=16, block_type="mbconv")
    model = build_model(group.name, **group.model_dump(exclude={"name"}), variance="diag")
    assert model.config["use_sar"] is True and model.config["scale_by"] == 10.0
    assert model_cost(model, 32, 32)["flops"] > 0


def test_defaults_are_resolved_in_config():
    assert build_model("uncrtaints").config["decoder_widths"] == [128] * 5
    assert build_model("utae").config["n_head"] == 16
    sscr = build_model("sscr").config
    assert sscr["encoder_widths"] == [32, 64, 128] and sscr["d_model"] == 128


def test_register_a_new_backbone_is_one_decorator():
    try:

        @register_model("tiny_test_model")
        class Tiny(CloudRemovalModel):
            def __init__(self, *, use_sar=True, use_mask=True, scale_by=10.0, block_type="mbconv",
                         n_head=None, d_model=None, encoder_widths=None, decoder_widths=None, variance=None):
                super().__init__(use_sar=use_sar, use_mask=use_mask, scale_by=scale_by, block_type=block_type,
                                 n_head=n_head, d_model=d_model, encoder_widths=encoder_widths,
                                 decoder_widths=decoder_widths, variance=variance)
                self.conv = torch.nn.Conv2d(self.in_channels, 13, 1)

            def forward(self, cloudy, sar=None, mask=None):
                return {"mean": torch.sigmoid(self.conv(self.prepare(cloudy, sar, mask).stacked(1.0)[:, 0]))}

        assert "tiny_test_model" in available_models()
        assert build_model("tiny_test_model").model_name == "tiny_test_model"
        with pytest.raises(ValueError, match="already registered"):
            register_model("sscr")(Tiny)
    finally:
        _MODELS.pop("tiny_test_model", None)


def test_select_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device().type == expected
    assert select_device("auto").type == expected
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            select_device("cuda")


@pytest.mark.parametrize("name", ["sscr", "uncrtaints", "utae", "unet"])
def test_for_inference_changes_the_layout_not_the_prediction(name):
    torch.manual_seed(0)
    model = build_model(name, variance="diag" if name != "unet" else None).eval()
    inputs = {key: value.uniform_() for key, value in example_inputs(model, 48, 40, batch=2).items()}
    with torch.no_grad():
        expected = model(**inputs)
        ready = for_inference(model, "cpu")
        got = ready(**inputs)
    assert not ready.training
    convs = [m.weight for m in ready.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs if w.shape[-1] > 1)
    for key, value in expected.items():
        if value is not None:
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda():
    device = select_device("cuda")
    model = build_model("sscr", variance="diag").to(device)
    out = model(torch.rand(1, 13, 32, 32, device=device), torch.rand(1, 2, 32, 32, device=device))
    assert out["mean"].device.type == "cuda"
