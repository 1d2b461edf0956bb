"""Faults survived: killed mask stage, killed download, MLflow server gone mid-training."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import rasterio
import yaml

from sscr.config import parse_params
from sscr.data.masks import mask_path, read_coverage_table
from sscr.data.synth import write_synthetic_sample

from servers import free_port, stop_group, wait_until_up
from tiny import TINY, deep_update

ENV = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}


def _mask_project(tmp_path: Path, workers: int):
    """A tiny synthetic sample and a params file for ``sscr masks`` with ``workers`` processes."""
    params = parse_params(deep_update(TINY, {"data": {"root": str(tmp_path / "data")},
                                             "masks": {"dir": str(tmp_path / "masks"), "workers": workers}}))
    pids = write_synthetic_sample(params.data.root, params.data.synth, patch_size=params.data.patch_size,
                                  progress=False)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return params, pids, params_file


def test_mask_stage_killed_mid_write_resumes_without_recomputing(tmp_path):
    params, pids, params_file = _mask_project(tmp_path, workers=1)
    third = sorted(pids)[2]
    command = [sys.executable, "-m", "sscr.cli", "masks", "--params", str(params_file)]
    killed = subprocess.run(command, env={**ENV, "SSCR_FAULT": f"raster.write:{third.name}.tif"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9
    done = [pid for pid in pids if mask_path(params.masks.dir, pid).exists()]
    assert sorted(done) == sorted(pids)[:2]  # the third was written to a temporary file, never renamed
    assert list(mask_path(params.masks.dir, third).parent.glob(".*.partial"))
    mtimes = {pid: mask_path(params.masks.dir, pid).stat().st_mtime_ns for pid in done}
    resumed = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(pids) - 2} computed, 2 already done" in resumed.stdout
    assert {pid: mask_path(params.masks.dir, pid).stat().st_mtime_ns for pid in done} == mtimes
    assert len(read_coverage_table(params.masks.dir)) == len(pids)
    assert not list(Path(params.masks.dir).rglob("*.partial"))
    for pid in pids:
        with rasterio.open(mask_path(params.masks.dir, pid)) as src:
            assert src.count == len(params.masks.kinds) and src.tags()["source"]


def test_mask_workers_die_with_the_stage(tmp_path):
    import psutil

    params, pids, params_file = _mask_project(tmp_path, workers=2)
    held = sorted(pids)[3]
    fault_dir = tmp_path / "fault"
    fault_dir.mkdir()
    # A worker stops just before putting the masks of `held` in place; then the stage is killed.
    env = {**ENV, "SSCR_FAULT": f"pause:raster.write:{held.name}.tif", "SSCR_FAULT_DIR": str(fault_dir)}
    stage = subprocess.Popen([sys.executable, "-m", "sscr.cli", "masks", "--params", str(params_file)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while not (fault_dir / "paused").exists():
            assert stage.poll() is None and time.monotonic() < deadline, "the stage never reached the held sample"
            time.sleep(0.1)
        children = psutil.Process(stage.pid).children(recursive=True)
        assert len([c for c in children if "resource_tracker" not in " ".join(c.cmdline())]) == 2
        stage.kill()
        stage.wait(timeout=30)
        (fault_dir / "resume").touch()  # a worker that outlived the stage would now write the held masks
        written = sorted(Path(params.masks.dir).rglob("*.tif"))

        def alive(process: psutil.Process) -> bool:
            try:
                return process.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        deadline = time.monotonic() + 15
        while any(alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [c.pid for c in children if alive(c)], "worker processes outlived the killed stage"
        time.sleep(1.0)
        assert not mask_path(params.masks.dir, held).exists()
        assert sorted(Path(params.masks.dir).rglob("*.tif")) == written
    finally:
        (fault_dir / "resume").touch()
        if stage.poll() is None:
            stage.kill()
        for child in children:  # without the fix, the workers are orphans: end them here
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


class _ThrottledArchive(http.server.BaseHTTPRequestHandler):
    """Serves one archive slowly, honouring Range, and records the Range headers it saw."""

    payload = b""
    ranges: list[str] = []

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        start = 0
        header = self.headers.get("Range")
        if header:
            type(self).ranges.append(header)
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload) - start))
        self.end_headers()
        try:
            for offset in range(start, len(self.payload), 4096):
                self.wfile.write(self.payload[offset:offset + 4096])
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow
def test_download_process_killed_mid_archive_resumes_from_partial_file(tmp_path):
    source = tmp_path / "source"
    synth = parse_params(TINY).data.synth.model_copy(update={"rois": {"train": 1, "val": 0, "test": 0}})
    write_synthetic_sample(source, synth, patch_size=64, seasons=["spring"], progress=False)
    season = next(p.name for p in source.iterdir() if p.name.endswith("_s1"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source / season, arcname=season)
        tar.addfile(tarfile.TarInfo("padding/zeros.bin"), io.BytesIO())
    _ThrottledArchive.payload = buffer.getvalue() + b""
    _ThrottledArchive.ranges = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ThrottledArchive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = tmp_path / "data"
    params = {"data": {"source": "sen12mscr", "root": str(root), "seasons": [season.split("_")[1]],
                       "modalities": ["s1"], "base_url": f"http://127.0.0.1:{server.server_port}/"}}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    script = ("import sys; from sscr.config import load_params; from sscr.data.download import download_sen12mscr;"
              "download_sen12mscr(load_params(sys.argv[1]).data, check_space=False, progress=False)")
    try:
        proc = subprocess.Popen([sys.executable, "-c", script, str(params_file)], env=ENV)
        part = root / ".downloads" / f"{season}.tar.gz.part"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < 20000):
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        size_at_kill = part.stat().st_size
        assert 0 < size_at_kill < len(_ThrottledArchive.payload)
        assert not (root / season).exists()  # nothing extracted from a partial archive
        done = subprocess.run([sys.executable, "-c", script, str(params_file)], env=ENV, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        server.shutdown()
    assert _ThrottledArchive.ranges and int(_ThrottledArchive.ranges[0].split("=")[1].split("-")[0]) >= size_at_kill
    extracted = sorted(p.relative_to(root) for p in (root / season).rglob("*.tif"))
    assert extracted == sorted(p.relative_to(source) for p in (source / season).rglob("*.tif"))


def _start_mlflow_server(store: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store / 'server.db'}", "--artifacts-destination",
         str(store / "artifacts"), "--workers", "1"],
        cwd=store, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", server, timeout=180)
    except BaseException:  # pytest.fail included: leave no server behind
        stop_group(server)
        raise
    return server


@pytest.mark.slow
def test_training_survives_tracking_server_loss_and_keeps_metrics(tiny_params, tmp_path):
    store = tmp_path / "server"
    store.mkdir()
    port = free_port()
    server = _start_mlflow_server(store, port)
    tiny_params.train.epochs = 3
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params.model_dump(mode="json")))
    faults = tmp_path / "faults"
    faults.mkdir()
    secret = "s3cr3t-pw"
    env = {**ENV, "MLFLOW_TRACKING_URI": f"http://sscr:{secret}@127.0.0.1:{port}",
           "SSCR_FAULT": "pause:train.batch:2:0", "SSCR_FAULT_DIR": str(faults),
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    proc = subprocess.Popen([sys.executable, "-m", "sscr.cli", "train", "--params", str(params_file)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (faults / "paused").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        stop_group(server)  # epoch 1 is logged; the server goes away during epoch 2
        (faults / "resume").touch()
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_group(server)
    assert proc.returncode == 0, stderr[-3000:]
    assert "unreachable" in stderr
    assert secret not in stdout + stderr
    run_folder = Path(tiny_params.train.res_dir) / tiny_params.train.experiment_name
    fallback = run_folder / "metrics_fallback.jsonl"
    kept = [json.loads(line) for line in fallback.read_text().splitlines()]
    assert {row["step"] for row in kept if row["key"] == "train_loss"} == {2, 3}
    assert (run_folder / "checkpoint_last.pt").exists()

    # The server comes back; the kept metrics are uploaded to the same run.
    server = _start_mlflow_server(store, port)
    try:
        sync_env = {k: v for k, v in env.items() if not k.startswith("SSCR_FAULT")}
        synced = subprocess.run([sys.executable, "-m", "sscr.cli", "sync-metrics", str(fallback)], cwd=tmp_path,
                                env=sync_env, capture_output=True, text=True, timeout=300)
        assert synced.returncode == 0, synced.stderr[-2000:]
        assert secret not in synced.stdout + synced.stderr
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"http://127.0.0.1:{port}")
        run_id = kept[0]["run_id"]
        assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == [1, 2, 3]
        params = client.get_run(run_id).data.params
        assert all(secret not in value for value in params.values())
    finally:
        stop_group(server)
    assert not fallback.exists()
