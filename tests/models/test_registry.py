"""Building backbones by name: names, alias, one typed config, errors, exact rebuild from ``config``, device."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from sscr.config import ModelConfig
from sscr.models import (
    BackboneConfig,
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
from sscr.models.multisarv2 import MultiSARv2

NAMES = ["mask_unet", "multisarv2", "sscr_lite", "uncrtaints", "unet", "utae"]


def test_available_models():
    assert available_models() == NAMES


def test_paper_name_sscr_builds_the_published_multisarv2():
    model = build_model("sscr", encoder_widths=[16], decoder_widths=[16])
    assert isinstance(model, MultiSARv2)
    assert model.model_name == "multisarv2"
    assert ModelConfig(name="sscr").name == "multisarv2"  # params and checkpoints hold the canonical name


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet'.*mask_unet, multisarv2, sscr_lite, uncrtaints, unet, utae"):
        build_model("resnet")


def test_backbone_config_is_the_model_group_plus_the_variance():
    fields = {field.name for field in dataclasses.fields(BackboneConfig)}
    assert fields == (set(ModelConfig.model_fields) - {"name"}) | {"variance"}
    group = ModelConfig(name="sscr_lite", encoder_widths=[8, 16], use_mask=False, mask_beta=0.25)
    config = BackboneConfig.from_model_config(group, "iso")
    assert config.encoder_widths == [8, 16] and config.use_mask is False and config.variance == "iso"
    model = build_model(group.name, config)
    assert model.config == {**config.as_dict(), "decoder_widths": [8, 16], "n_head": 4, "d_model": 16}
    with pytest.raises(TypeError, match="not both"):
        build_model("unet", config, scale_by=1.0)


def test_every_backbone_constructor_takes_one_config():
    for name in NAMES:
        init = _MODELS[name].__init__
        assert list(init.__code__.co_varnames[1:init.__code__.co_argcount]) == ["config"], name


def test_unknown_keyword_is_named():
    with pytest.raises(TypeError, match="unet: unknown model parameter\\(s\\) encoder_width; accepted"):
        build_model("unet", encoder_width=[8, 16])


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("variance", "full", "variance must be one of"),
        ("block_type", "transformer", "model.block_type must be one of"),
        ("encoder_widths", [], "model.encoder_widths must be a non-empty list"),
        ("scale_by", 0.0, "model.scale_by must be > 0"),
        ("mask_beta", 1.5, "model.mask_beta must be in"),
        ("n_head", 0, "model.n_head must be a positive integer"),
    ],
)
def test_bad_values_are_refused(key, value, match):
    with pytest.raises(ValueError, match=match):
        build_model("sscr_lite", **{key: value})


def test_incompatible_heads_are_refused():
    with pytest.raises(ValueError, match="divisible by n_head"):
        build_model("sscr_lite", encoder_widths=[16, 24], n_head=16)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("sscr_lite", {}),
        ("sscr_lite", {"variance": "iso", "use_sar": False, "block_type": "residual", "encoder_widths": [8, 16]}),
        ("sscr_lite", {"use_mask": False, "n_head": 2, "d_model": 16, "encoder_widths": [8, 16, 16]}),
        ("uncrtaints", {"variance": "diag", "block_type": "residual"}),
        ("uncrtaints", {"use_sar": False, "encoder_widths": [16], "decoder_widths": [16, 16], "scale_by": 1.0}),
        ("multisarv2", {"variance": "iso", "mask_beta": 0.5}),
        ("utae", {"variance": "diag", "use_mask": False}),
        ("unet", {"encoder_widths": [8, 16], "decoder_widths": [12, 16], "scale_by": 1.0, "variance": "iso"}),
        ("mask_unet", {"encoder_widths": [8, 16], "decoder_widths": [12, 16], "scale_by": 1.0}),
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


@pytest.mark.parametrize("name", [*NAMES, "sscr"])
def test_params_yaml_model_group_fits_every_backbone(name):
    group = ModelConfig(name=name, n_head=16, block_type="mbconv")
    model = build_model(group.name, BackboneConfig.from_model_config(group, "diag"))
    assert model.config["use_sar"] is True and model.config["scale_by"] == 10.0
    assert model_cost(model, 32, 32)["flops"] > 0


def test_defaults_are_resolved_in_config():
    assert build_model("uncrtaints").config["decoder_widths"] == [128] * 5
    assert build_model("utae").config["decoder_widths"] == [32, 32, 64, 128]
    lite = build_model("sscr_lite").config
    assert lite["encoder_widths"] == [32, 64, 128] and lite["d_model"] == 128
    # use_mask null = the backbone's default: the published networks take no mask
    assert {name: build_model(name).config["use_mask"] for name in NAMES} == {
        "mask_unet": True, "multisarv2": False, "sscr_lite": True, "uncrtaints": False, "unet": False, "utae": False}


def test_a_checkpoint_config_written_before_mask_beta_still_rebuilds():
    stored = {"use_sar": True, "use_mask": True, "scale_by": 10.0, "block_type": "mbconv", "n_head": None,
              "d_model": None, "encoder_widths": [8, 16], "decoder_widths": [8, 16], "variance": None}
    model = build_model("mask_unet", **stored)
    assert model.config == {**stored, "mask_beta": 0.0}


def test_register_a_new_backbone_is_one_decorator():
    try:

        @register_model("tiny_test_model")
        class Tiny(CloudRemovalModel):
            def __init__(self, config=BackboneConfig()):  # noqa: B008
                super().__init__(config)
                self.conv = torch.nn.Conv2d(self.in_channels, 13, 1)

            def forward(self, cloudy, sar=None, mask=None):
                return {"mean": torch.sigmoid(self.conv(self.prepare(cloudy, sar, mask).stacked(1.0)[:, 0]))}

        assert "tiny_test_model" in available_models()
        assert build_model("tiny_test_model").model_name == "tiny_test_model"
        with pytest.raises(ValueError, match="already registered"):
            register_model("sscr")(Tiny)  # an alias is taken too
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
        with pytest.raises(ValueError, match="train.device: 'cuda' asks for a GPU, but CUDA is not available"):
            select_device("cuda", key="train.device")


@pytest.mark.parametrize("name", NAMES)
def test_for_inference_changes_the_layout_not_the_prediction(name):
    torch.manual_seed(0)
    small = {"encoder_widths": [16], "decoder_widths": [16] * 5} if name in ("uncrtaints", "multisarv2") else {}
    model = build_model(name, variance="diag" if name != "mask_unet" else None, **small).eval()
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
    model = build_model("sscr_lite", variance="diag").to(device)
    out = model(torch.rand(1, 13, 32, 32, device=device), torch.rand(1, 2, 32, 32, device=device))
    assert out["mean"].device.type == "cuda"
