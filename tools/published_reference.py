"""Reference outputs of the published UnCRtainTS, MultiSARv2 and U-Net code, the fixtures of the parity tests.

    python tools/published_reference.py --published /path/to/sscr --out tests/fixtures/published/

``--published`` is a checkout of github.com/RSIR25/sscr (the seed's code: UnCRtainTS plus
``multisarv2.py`` and the ``ml`` loss). Not run by CI: ``tests/models/test_published_parity.py``
and ``tests/test_published.py`` read only the files written here. The published modules are
imported from ``<published>/model`` with stand-ins for the modules they import but the
checkout lacks (``tools/published_env.py``); nothing of them is copied.

Each case builds one published network at a tiny width with the seed's settings
(``--pretrain``: single date; ``--scale_by 10``; ``--use_sar``), seeded, then
``weight_init`` over the whole network as ``train_reconstruct.py`` does (the U-Net,
which ``--model unet`` and ``--model utae --pretrain`` build, through the published
``model_utils.get_generator`` from the published parser's configuration), and records:
the initial state dict; the scaled outputs of an eval-mode and of a train-mode forward
(the train-mode one moves the batch-norm statistics, as training does); the published
losses on the train-mode outputs; the state dict after one Adam step (lr 1e-3, as the
seed's command) on the case's loss. MGNLL is also recorded on the first image alone
(batch 1), where the published per-batch log-determinant equals the per-pixel one. The
U-Net cases also record an eval-mode forward where the second input sample is all zeros
(:func:`padded_input`; the published encoder's padding rule).
Everything is saved with ``torch.save`` as plain tensors, numbers and strings
(loadable with ``weights_only=True``; state dicts packed into one tensor each), about 800 KB in all.

It also writes ``published_run/``: a tiny published training run's ``model.pth.tar`` and
``conf.json``, written by the published code itself (:func:`write_published_run`: the
training script's configuration from the seed's command line at width 16, ``BaseModel``,
one ``optimize_parameters`` step and a scheduler step, ``save_model``), and
``published_run_outputs.pt``, that network's eval-mode outputs on ``inputs.pt``; and the
same for the seed's line with ``--model unet`` and ``--model utae`` (``published_run_unet/``,
``published_run_utae/`` and their ``_outputs.pt``: the script trains both with ``l2``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import types
from pathlib import Path
from typing import Any

import published_env
import torch

SEED = 7
BATCH, SIZE = 2, 8
SCALE_BY = 10.0
LR = 1e-3
S2_BANDS = 13

# name -> published network, width, decoder blocks, published covmode, output channels,
#         the loss stepped, the published losses recorded, and our matching settings
CASES: dict[str, dict[str, Any]] = {
    "uncrtaints_l1": {"net": "UNCRTAINTS", "width": 8, "decoder_blocks": 2, "covmode": "diag", "out": 13,
                      "step": "l1", "losses": ["l1", "l2"], "ours": {"name": "uncrtaints", "variance": None}},
    "multisarv2_ml": {"net": "MultiSARv2", "width": 16, "decoder_blocks": 2, "covmode": "diag", "out": 13,
                      "step": "ml", "losses": ["ml", "l1"], "ours": {"name": "multisarv2", "variance": None}},
    # the seed's GNLL sets covmode "uni": 13 variance channels, our "diag"; MGNLL diag reads the same outputs
    "uncrtaints_gnll": {"net": "UNCRTAINTS", "width": 8, "decoder_blocks": 2, "covmode": "uni", "out": 26,
                        "step": "GNLL", "losses": ["GNLL", "MGNLL_diag"],
                        "ours": {"name": "uncrtaints", "variance": "diag"}},
    "uncrtaints_iso": {"net": "UNCRTAINTS", "width": 8, "decoder_blocks": 2, "covmode": "iso", "out": 14,
                       "step": "MGNLL_iso_batch1", "losses": ["MGNLL_iso"],
                       "ours": {"name": "uncrtaints", "variance": "iso"}},
    # --model unet (and utae under --pretrain): the published script trains it with l2 only
    "unet_l2": {"net": "UNet", "encoder": [4, 4, 8], "decoder": [4, 6, 8], "covmode": "diag", "out": 13,
                "step": "l2", "losses": ["l2", "l1"], "ours": {"name": "unet", "variance": None}},
    # a variance head, as the published U-Net builds it when out_conv asks for one (softplus, no eps)
    "unet_gnll": {"net": "UNet", "encoder": [4, 8], "decoder": [4, 8], "covmode": "uni", "out": 26,
                  "step": "GNLL", "losses": ["GNLL"], "ours": {"name": "unet", "variance": "diag"}},
}


def import_published(checkout: Path) -> types.SimpleNamespace:
    """The published backbones, losses, init and checkpoint code, imported from ``<checkout>/model``."""
    return published_env.published_modules(checkout)


def unet_config(pub: types.SimpleNamespace, case: dict[str, Any]) -> argparse.Namespace:
    """The published parser's configuration of ``--model unet --pretrain`` at the case's widths and outputs."""
    config = pub.parse_args.create_parser(mode="train").parse_args([
        "--model", "unet", "--pretrain", "--use_sar", "--scale_by", str(SCALE_BY), "--loss", "l2",
        "--encoder_widths", json.dumps(case["encoder"]), "--decoder_widths", json.dumps(case["decoder"]),
        "--out_conv", f"[{case['out']}]"])
    return pub.utils.str2list(config, list_args=["encoder_widths", "decoder_widths", "out_conv"])


def build(pub: types.SimpleNamespace, case: dict[str, Any]) -> torch.nn.Module:
    """The network as ``model_utils.get_generator`` builds it under the seed's flags, seeded and initialised."""
    if case["net"] == "UNet":
        config = unet_config(pub, case)
        torch.manual_seed(SEED)
        net = pub.model_utils.get_generator(config)
        net.apply(pub.weight_init)
        return net
    torch.manual_seed(SEED)
    net = getattr(pub, case["net"])(
        input_dim=2 + S2_BANDS, encoder_widths=[case["width"]], decoder_widths=[case["width"]] * case["decoder_blocks"],
        out_conv=[case["out"]], out_nonlin_mean=True, out_nonlin_var="softplus", agg_mode="att_group",
        encoder_norm="group", decoder_norm="batch", n_head=1, d_model=256, d_k=4, pad_value=0,
        padding_mode="reflect", positional_encoding=False, covmode=case["covmode"], scale_by=SCALE_BY,
        separate_out=False, use_v=False, block_type="mbconv", is_mono=True,
    )
    net.apply(pub.weight_init)
    return net


def pair(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A published forward's (stacked outputs, extra): UNCRTAINTS and MultiSARv2 return both, the U-Net one tensor."""
    return out if isinstance(out, tuple) else (out, None)


def split(out: Any) -> dict[str, torch.Tensor]:
    """The published (out, extra) tuple as {"mean", "var", "sar_mask"}, (B, C, H, W), scaled units."""
    stacked, extra = pair(out)
    parts = {"mean": stacked[:, 0, :S2_BANDS]}
    if stacked.shape[2] > S2_BANDS:
        parts["var"] = stacked[:, 0, S2_BANDS:]
    if extra is not None and extra.dim() == 5 and extra.shape[2] == 1:  # MultiSARv2's sar_mask
        parts["sar_mask"] = extra[:, 0]
    return {key: value.detach().clone() for key, value in parts.items()}


def published_loss(pub: types.SimpleNamespace, name: str, out: Any, target: torch.Tensor) -> torch.Tensor:
    """One published loss on a published forward's output, called as ``base_model.get_loss_G`` calls it."""
    stacked, extra = pair(out)
    mean, var = stacked[:, :, :S2_BANDS], stacked[:, :, S2_BANDS:]
    losses = pub.losses
    if name.endswith("_batch1"):
        name = name.removesuffix("_batch1")
        mean, var, target, extra = mean[:1], var[:1], target[:1], (None if extra is None else extra[:1])
    if name == "l1":
        return torch.nn.L1Loss()(mean, target)
    if name == "l2":
        return torch.nn.MSELoss()(mean, target)
    if name == "ml":
        return losses.MultimodalLoss(reduction="mean")(mean, target, extra)
    if name == "GNLL":
        return losses.GaussianNLLLoss(reduction="mean", eps=1e-8, full=True)(mean, target, var)[0]
    if name.startswith("MGNLL_"):
        mode = name.removeprefix("MGNLL_")
        return losses.MultiGaussianNLLLoss(reduction="mean", eps=1e-8, full=True, mode=mode, chunk=None)(
            mean, target, var)[0]
    raise ValueError(f"no published loss {name!r}")


def state(net: torch.nn.Module) -> dict[str, Any]:
    """The state dict packed into one flat float32 tensor plus its keys, shapes and dtypes.

    One tensor instead of a hundred keeps the file small (each tensor of a ``torch.save``
    file is a zip record with its own headers); float32 holds the batch-norm counters exactly.
    """
    tensors = net.state_dict()
    return {
        "keys": list(tensors),
        "shapes": [list(value.shape) for value in tensors.values()],
        "dtypes": [str(value.dtype).removeprefix("torch.") for value in tensors.values()],
        "values": torch.cat([value.detach().reshape(-1).float() for value in tensors.values()]),
    }


def run_case(pub: types.SimpleNamespace, case: dict[str, Any], inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Everything the parity tests compare for one case."""
    net = build(pub, case)
    widths = ({"encoder_widths": case["encoder"], "decoder_widths": case["decoder"]} if "encoder" in case else
              {"encoder_widths": [case["width"]], "decoder_widths": [case["width"]] * case["decoder_blocks"]})
    record: dict[str, Any] = {
        "seed": SEED, "scale_by": SCALE_BY, "lr": LR, "step": case["step"], "ours": {**case["ours"], **widths},
        "state_init": state(net),
    }
    network_input, target = inputs["network_input"], SCALE_BY * inputs["target"].unsqueeze(1)
    net.eval()
    with torch.no_grad():
        record["eval"] = split(net(network_input))
        if case["net"] == "UNet":  # the published encoder's padding rule: an all-zero sample gets zero features
            record["eval_padded"] = split(net(padded_input(network_input)))
    net.train()
    out = net(network_input)
    record["train"] = split(out)
    losses = {}
    for name in case["losses"]:
        losses[name] = float(published_loss(pub, name, out, target).detach())
        if name.startswith("MGNLL"):
            losses[f"{name}_batch1"] = float(published_loss(pub, f"{name}_batch1", out, target).detach())
    record["losses"] = losses
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    optimizer.zero_grad()
    if case["step"].endswith("_batch1"):  # the published MGNLL is right at batch 1 only: step on image 0
        out = net(network_input[:1])
        record["step_batch"] = 1
    else:
        record["step_batch"] = BATCH
    loss = published_loss(pub, case["step"], out, target)
    record["step_loss"] = float(loss.detach())
    loss.backward()
    optimizer.step()
    record["state_after_step"] = state(net)
    return record


def padded_input(network_input: torch.Tensor) -> torch.Tensor:
    """``network_input`` with its second sample all zeros: padding, to the published U-Net's encoder."""
    padded = network_input.clone()
    padded[1] = 0.0
    return padded


def make_inputs() -> dict[str, torch.Tensor]:
    """[0, 1] inputs and target, and the published network's input: S1 then S2, times scale_by, T = 1.

    The published losses see the target times scale_by, with the time axis: (B, 1, 13, H, W).
    """
    generator = torch.Generator().manual_seed(SEED)
    cloudy = torch.rand(BATCH, S2_BANDS, SIZE, SIZE, generator=generator)
    sar = torch.rand(BATCH, 2, SIZE, SIZE, generator=generator)
    target = (0.6 * torch.rand(BATCH, S2_BANDS, SIZE, SIZE, generator=generator) + 0.4 * cloudy).clamp(0, 1)
    # prepare_data_mono stacks S1 before S2 and adds the time axis; set_input multiplies by scale_by
    network_input = SCALE_BY * torch.cat((sar.unsqueeze(1), cloudy.unsqueeze(1)), dim=2)
    return {"cloudy": cloudy, "sar": sar, "target": target, "network_input": network_input}


RUN_NAME = "published_run"
#: The seed's command line (README), at width 16 and batch 2, on CPU: what the published run is trained with.
RUN_ARGV = ["--experiment_name", RUN_NAME, "--res_dir", "results", "--model", "multisarv2", "--epochs", "20",
            "--lr", "0.001", "--batch_size", str(BATCH), "--gamma", "1.0", "--scale_by", str(SCALE_BY), "--loss", "ml",
            "--use_sar", "--block_type", "mbconv", "--n_head", "16", "--device", "cpu", "--rdm_seed", "1",
            "--pretrain", "--encoder_widths", "[16]", "--decoder_widths", "[16,16]"]


def seed_line(model: str, name: str, encoder: str, decoder: str) -> list[str]:
    """:data:`RUN_ARGV` with another ``--model``, run name and widths."""
    argv = list(RUN_ARGV)
    for flag, value in (("--model", model), ("--experiment_name", name), ("--encoder_widths", encoder),
                        ("--decoder_widths", decoder)):
        argv[argv.index(flag) + 1] = value
    return argv


#: Run name -> the seed's command line it is trained with: the published SSCR, and the seed's line with
#: ``--model unet`` and ``--model utae`` (both the published U-Net under --pretrain; the script trains them with l2).
RUNS: dict[str, list[str]] = {
    RUN_NAME: RUN_ARGV,
    f"{RUN_NAME}_unet": seed_line("unet", f"{RUN_NAME}_unet", "[4,8]", "[4,8]"),
    f"{RUN_NAME}_utae": seed_line("utae", f"{RUN_NAME}_utae", "[4,8]", "[6,8]"),
}


def write_published_run(checkout: Path, inputs: dict[str, torch.Tensor], out: Path, name: str = RUN_NAME,
                        argv: list[str] = RUN_ARGV) -> dict[str, Path]:
    """A tiny published training run's ``model.pth.tar`` and ``conf.json``, written by the published code.

    As ``train_reconstruct.py`` does with ``argv`` (:data:`RUNS`): its module-level configuration
    (imported with that command line, in a scratch directory), ``get_model``, ``weight_init``
    on the network, the loss; then one ``set_input`` / ``optimize_parameters`` step on the
    fixture batch and one scheduler step (the end of epoch 1); ``conf.json`` as its ``main``
    writes it; ``save_model(config, 1, model, "model")``. Also the network's eval-mode
    outputs on the inputs (scaled units) as ``<name>_outputs.pt``.
    """
    pub = import_published(checkout)
    scratch = Path(tempfile.mkdtemp(prefix="sscr-published-run-"))
    try:
        script = published_env.import_script(checkout, "train_reconstruct", argv, scratch)
        config = script.config
        torch.manual_seed(SEED)
        model = pub.model_utils.get_model(config)
        model.netG.apply(pub.weight_init)
        model.criterion = pub.losses.get_loss(config)
        model.train()
        model.netG.train()
        # prepare_data_mono: S1 then S2 with a time axis; set_input multiplies by scale_by
        network_input = torch.cat((inputs["sar"].unsqueeze(1), inputs["cloudy"].unsqueeze(1)), dim=2)
        model.set_input({"A": network_input, "B": inputs["target"].unsqueeze(1), "dates": None, "masks": None})
        model.optimize_parameters()
        model.scheduler_G.step()
        config.N_params = pub.utils.get_ntrainparams(model)
        run_dir = scratch / "results" / name
        (run_dir / "conf.json").write_text(json.dumps(vars(config), indent=4))
        config.res_dir = str(scratch / "results")
        pub.model_utils.save_model(config, 1, model, "model")
        model.netG.eval()
        with torch.no_grad():
            outputs = split(model.netG(SCALE_BY * network_input))
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        paths = {file: target / file for file in ("model.pth.tar", "conf.json")}
        for file, path in paths.items():
            shutil.copyfile(run_dir / file, path)
        paths["outputs"] = out / f"{name}_outputs.pt"
        torch.save({**outputs, "scale_by": SCALE_BY}, paths["outputs"])
        return paths
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def published_commit(checkout: Path) -> str:
    """The checkout's git commit, or "unknown"."""
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Write ``inputs.pt`` and one ``<case>.pt`` per case under ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--published", type=Path, required=True, help="checkout of github.com/RSIR25/sscr")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/published"))
    args = parser.parse_args(argv)
    pub = import_published(args.published)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs()
    meta = {"published_commit": published_commit(args.published), "torch": str(torch.__version__)}
    torch.save({**inputs, "meta": meta}, args.out / "inputs.pt")
    for name, case in CASES.items():
        torch.save(run_case(pub, case, inputs), args.out / f"{name}.pt")
    for name, run_argv in RUNS.items():
        write_published_run(args.published, inputs, args.out, name, run_argv)
    sizes = {str(path.relative_to(args.out)): path.stat().st_size for path in sorted(args.out.rglob("*"))
             if path.is_file()}
    print(f"{args.out}: " + ", ".join(f"{name} {size / 1024:.0f} KB" for name, size in sizes.items())
          + f"; {sum(sizes.values()) / 1024:.0f} KB in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
