"""Checkpoints of the published code: read, mapped to our params, refused by name when they cannot be honoured.

``tests/fixtures/published/published_run/`` is a tiny run written by the published code
itself (``tools/published_reference.py``: its training script's configuration from the
seed's command line at width 16, one optimiser step, ``save_model``);
``published_run_outputs.pt`` its network's eval-mode outputs on ``inputs.pt``;
``published_run_unet/`` and ``published_run_utae/`` the same with the seed's line for
``--model unet`` and ``--model utae`` (the published single-date U-Net, trained with ``l2``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sscr.config import LossConfig
from sscr.models import build_model, load_published
from sscr.models.published import (
    IGNORED,
    MAPPED,
    REQUIRED,
    PublishedFormatError,
    network_state_dict,
    published_checkpoint,
    published_conf,
    published_settings,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "published"
RUN = FIXTURES / "published_run"
TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def inputs() -> dict:
    return torch.load(FIXTURES / "inputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def conf() -> dict:
    return json.loads((RUN / "conf.json").read_text())


def test_load_published_returns_the_published_outputs_divided_by_scale_by(inputs):
    reference = torch.load(FIXTURES / "published_run_outputs.pt", weights_only=True)
    model = load_published(RUN / "model.pth.tar")  # conf.json beside it
    assert not model.training and model.model_name == "multisarv2"
    with torch.no_grad():
        out = model(inputs["cloudy"], inputs["sar"])
    assert set(out) == {"mean", "sar_mask"}
    torch.testing.assert_close(out["mean"], reference["mean"] / reference["scale_by"], **TOL)
    torch.testing.assert_close(out["sar_mask"], reference["sar_mask"], **TOL)
    assert 0 <= float(out["mean"].min()) and float(out["mean"].max()) <= 1


@pytest.mark.parametrize(("run", "name"), [("published_run_unet", "unet"), ("published_run_utae", "utae")])
def test_load_published_takes_the_published_unet_and_utae(run, name, inputs):
    """The seed's --model unet and --model utae runs: the U-Net, loaded strictly, giving the published outputs."""
    reference = torch.load(FIXTURES / f"{run}_outputs.pt", weights_only=True)
    model = load_published(FIXTURES / run / "model.pth.tar")
    assert not model.training and model.model_name == name and model.variance is None
    published = torch.load(FIXTURES / run / "model.pth.tar", weights_only=True)["state_dict_G"]
    assert list(model.state_dict()) == list(published)
    with torch.no_grad():
        out = model(inputs["cloudy"], inputs["sar"])
    assert set(out) == {"mean"}
    torch.testing.assert_close(out["mean"], reference["mean"] / reference["scale_by"], **TOL)
    settings = published_settings(json.loads((FIXTURES / run / "conf.json").read_text()))
    assert settings.overrides["loss.name"] == "l2"  # the published script trains both with l2
    assert settings.overrides["train.batch_size"] == (32 if name == "unet" else 2)  # and unet at batch 32


@pytest.mark.parametrize("name", ["uncrtaints_gnll", "uncrtaints_iso", "multisarv2_ml", "unet_l2", "unet_gnll"])
def test_load_published_on_the_parity_references(name, inputs, tmp_path):
    """A checkpoint in the published format holding the parity case's published weights gives its outputs."""
    from test_published_parity import unpack

    case = torch.load(FIXTURES / f"{name}.pt", weights_only=True)
    settings = dict(case["ours"])
    model = build_model(settings.pop("name"), scale_by=case["scale_by"], **settings)
    model.load_state_dict(unpack(case["state_init"]), strict=True)
    loss = {"uncrtaints_gnll": LossConfig(name="GNLL"), "uncrtaints_iso": LossConfig(name="MGNLL", covmode="iso"),
            "multisarv2_ml": LossConfig(name="ml"), "unet_l2": LossConfig(name="l2"),
            "unet_gnll": LossConfig(name="GNLL")}[name]
    (tmp_path / "conf.json").write_text(json.dumps(published_conf(model, loss, {}, "case")))
    torch.save(published_checkpoint(model, 0, {}, {}), tmp_path / "model.pth.tar")
    loaded = load_published(tmp_path / "model.pth.tar", tmp_path / "conf.json")
    with torch.no_grad():
        out = loaded(inputs["cloudy"], inputs["sar"])
    assert set(out) == set(case["eval"])
    for key, reference in case["eval"].items():
        scale = case["scale_by"] ** {"mean": 1, "var": 2, "sar_mask": 0}[key]
        torch.testing.assert_close(out[key], reference / scale, **TOL)


def test_published_conf_keys_are_mapped(conf):
    settings = published_settings(conf)
    assert settings.model_name == "multisarv2"
    assert settings.overrides["model.encoder_widths"] == [16] and settings.overrides["model.decoder_widths"] == [16, 16]
    assert settings.overrides["model.scale_by"] == 10.0 and settings.overrides["model.use_sar"] is True
    assert settings.overrides["loss.name"] == "ml" and settings.overrides["train.lr"] == 0.001
    assert settings.backbone.variance is None and settings.backbone.use_mask is False
    # every key the published script wrote is mapped, checked or knowingly ignored
    assert set(conf) <= set(MAPPED) | set(REQUIRED) | set(IGNORED)
    assert settings.unknown == [] and {"root3", "pid", "use_v", "out_conv"} <= set(settings.ignored)
    # the argparse string form of the widths, and a key we do not know, are fine
    strings = published_settings({**conf, "encoder_widths": "[16]", "decoder_widths": "[16,16]", "new_flag": 1})
    assert strings.overrides["model.decoder_widths"] == [16, 16] and strings.unknown == ["new_flag"]


def test_gnll_conf_maps_to_13_variance_channels():
    settings = published_settings({"model": "uncrtaints", "loss": "GNLL", "covmode": "uni", "out_conv": [26],
                                   "encoder_widths": "[8]", "decoder_widths": "[8,8]", "pretrain": True})
    assert settings.overrides["loss.name"] == "GNLL" and settings.backbone.variance == "diag"
    iso = published_settings({"model": "uncrtaints", "loss": "MGNLL", "covmode": "iso", "out_conv": "[14]"})
    assert iso.backbone.variance == "iso" and iso.backbone.encoder_widths == [128]


@pytest.mark.parametrize(("change", "named"), [
    ({"input_t": 3}, "input_t = 3"),
    ({"pretrain": False}, "pretrain = False"),
    ({"separate_out": True}, "separate_out = True"),
    ({"mean_nonLinearity": False}, "mean_nonLinearity = False"),
    ({"encoder_norm": "batch"}, "encoder_norm = 'batch'"),
    ({"model": "convlstm"}, "model = 'convlstm'"),
    ({"model": "unet", "loss": "l2", "padding_mode": "zeros"}, "padding_mode = 'zeros'"),
    ({"model": "utae", "loss": "l2", "pad_value": 1.0}, "pad_value = 1.0"),
    ({"block_type": "residual"}, "model.block_type"),
    ({"use_sar": False}, "model.use_sar"),
    ({"out_conv": [26]}, "out_conv = [26]"),
    ({"loss": "MGNLL", "covmode": "uni", "out_conv": [26]}, "covmode = 'uni'"),
    ({"loss": "GNLL", "covmode": "uni", "out_conv": [26], "var_nonLinearity": "relu"}, "var_nonLinearity = 'relu'"),
    ({"model": "uncrtaints"}, "loss = 'ml' needs model multisarv2"),
    ({"loss": "bdc"}, "loss = 'bdc'"),
])
def test_what_cannot_be_honoured_is_refused_by_name(conf, change, named):
    with pytest.raises(PublishedFormatError) as err:
        published_settings({**conf, **change}, "run/conf.json")
    message = str(err.value)
    assert message.startswith("run/conf.json: ") and named in message and "\n" not in message


def test_weights_of_modules_not_reproduced_are_refused_by_name():
    checkpoint = torch.load(RUN / "model.pth.tar", weights_only=True)
    temporal = {**checkpoint["state_dict_G"], "temporal_encoder.in_norm.weight": torch.ones(16)}
    with pytest.raises(PublishedFormatError, match=r"temporal encoder \(L-TAE\) \(temporal_encoder.in_norm.weight"):
        network_state_dict({"state_dict_G": temporal}, "x.pth.tar")
    # without state_dict_G, the wrapper's state_dict minus its netG. prefix
    weights = network_state_dict({"state_dict": checkpoint["state_dict"]})
    assert weights.keys() == checkpoint["state_dict_G"].keys()
    assert all(torch.equal(weights[k], checkpoint["state_dict_G"][k]) for k in weights)


def test_a_conf_that_does_not_fit_the_weights_is_refused(conf, tmp_path):
    (tmp_path / "conf.json").write_text(json.dumps({**conf, "encoder_widths": [32], "decoder_widths": [32, 32]}))
    with pytest.raises(PublishedFormatError, match=r"does not fit multisarv2 .* missing|size mismatch"):
        load_published(RUN / "model.pth.tar", tmp_path / "conf.json")
    with pytest.raises(PublishedFormatError, match="no conf.json at .*: pass the run's conf.json"):
        load_published(RUN / "model.pth.tar", tmp_path / "absent.json")
    (tmp_path / "notes.pth.tar").write_text("not a checkpoint")
    with pytest.raises(PublishedFormatError, match="notes.pth.tar is not a readable PyTorch checkpoint"):
        load_published(tmp_path / "notes.pth.tar", conf)


def test_exported_checkpoint_has_the_published_structure():
    """What ``published_checkpoint`` builds has the keys, nesting and types of the published save_model's file."""
    published = torch.load(RUN / "model.pth.tar", weights_only=True)
    model = load_published(RUN / "model.pth.tar")
    ours = published_checkpoint(model, published["epoch"], published["optimizer_G"], published["scheduler_G"])
    assert list(ours) == list(published)
    for key in ("state_dict", "state_dict_G"):
        assert list(ours[key]) == list(published[key])
        for name, value in published[key].items():
            assert ours[key][name].dtype == value.dtype and torch.equal(ours[key][name], value), name
    assert all(name.startswith("netG.") for name in ours["state_dict"])
    assert math.isfinite(float(ours["epoch"]))


def test_export_refuses_what_the_published_scripts_would_run_differently():
    """A structure-mask gate the published MultiSARv2 fixes at 0, and a loss it does not know."""
    gated = build_model("multisarv2", encoder_widths=[16], decoder_widths=[16], mask_beta=0.5)
    with pytest.raises(PublishedFormatError, match="mask_beta = 0.5 has no published counterpart.*fixes mask_beta at 0"):
        published_conf(gated, LossConfig(name="ml"), {}, "gated")
    plain = build_model("uncrtaints", encoder_widths=[16], decoder_widths=[16], mask_beta=0.5)  # unused there
    with pytest.raises(PublishedFormatError, match="loss 'structure' has no published counterpart"):
        published_conf(plain, LossConfig(name="structure"), {}, "mixed")
    assert published_conf(plain, LossConfig(name="l1"), {}, "fine")["loss"] == "l1"


@pytest.mark.parametrize("name", ["unet", "utae"])
def test_unet_conf_round_trips_through_the_published_format(name):
    model = build_model(name, encoder_widths=[4, 8], decoder_widths=[6, 8], variance="diag")
    conf = published_conf(model, LossConfig(name="GNLL"), {"lr": 0.001}, "demo")
    assert conf["model"] == name and conf["out_conv"] == [26] and conf["covmode"] == "uni" and conf["pretrain"]
    settings = published_settings(conf)
    unused = {"n_head", "d_model"}  # the multi-date L-TAE's: --pretrain writes n_head 1
    assert settings.model_name == name
    assert {k: v for k, v in settings.backbone.as_dict().items() if k not in unused} == \
        {k: v for k, v in model.config.items() if k not in unused}
