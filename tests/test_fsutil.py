"""The one atomic write: all or nothing, also when the process dies between the write and the rename."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from sscr.fsutil import atomic_path, temporary_path, write_text

from sandbox import can_mount, in_namespace, subprocess_env


def test_write_text_puts_the_file_in_place_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "record.json"
    assert write_text(target, '{"a": 1}') == target
    assert target.read_text() == '{"a": 1}'
    assert list(target.parent.iterdir()) == [target]


def test_a_failing_writer_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full (simulated)")
    assert target.read_text() == "old"
    assert not temporary_path(target).exists()


def test_two_files_are_put_in_place_together_or_not_at_all(tmp_path):
    mean, var = tmp_path / "mean.tif", tmp_path / "var.tif"
    with pytest.raises(ValueError), atomic_path(mean) as mean_tmp, atomic_path(var) as var_tmp:
        mean_tmp.write_bytes(b"mean")
        var_tmp.write_bytes(b"var")
        raise ValueError("failed before the end")
    assert sorted(tmp_path.iterdir()) == []
    with atomic_path(mean) as mean_tmp, atomic_path(var) as var_tmp:
        mean_tmp.write_bytes(b"mean")
        var_tmp.write_bytes(b"var")
    assert mean.read_bytes() == b"mean" and var.read_bytes() == b"var"


def test_a_crash_at_the_fault_point_leaves_the_previous_file(tmp_path):
    target = tmp_path / "checkpoint_last.pt"
    target.write_bytes(b"epoch 1")
    script = ("import sys; from sscr.fsutil import atomic_path\n"
              "with atomic_path(sys.argv[1], fault_point='checkpoint.write:2') as tmp:\n"
              "    tmp.write_bytes(b'epoch 2')\n")
    env = {**os.environ, "SSCR_FAULT": "checkpoint.write:2"}
    done = subprocess.run([sys.executable, "-c", script, str(target)], env=env, timeout=60)
    assert done.returncode == -9  # SIGKILL, as a real crash
    assert target.read_bytes() == b"epoch 1"
    assert temporary_path(target).read_bytes() == b"epoch 2"  # complete, flushed, never renamed


def test_a_write_error_names_the_file_not_its_temporary_name(tmp_path):
    import errno

    target = tmp_path / "coverage.csv"
    with pytest.raises(OSError) as failed, atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")  # as write(2) reports it: no file name
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(target)
    with pytest.raises(OSError) as failed, atomic_path(tmp_path / "ro" / "x.csv") as tmp:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp))  # as open(2) reports it: the temporary
    assert failed.value.filename == str(tmp_path / "ro" / "x.csv")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ro"]


FULL_DISK_SCRIPT = """
import errno, os, sys, torch
from sscr.checkpoint import save_atomic
from sscr.data.io import write_raster
from sscr.fsutil import write_text
from affine import Affine
import numpy as np
full = sys.argv[1]
writers = {
    "model.pt": lambda p: save_atomic({"weights": torch.rand(100_000)}, p),   # torch says RuntimeError
    "table.csv": lambda p: write_text(p, "x" * 100_000),
    "mask.tif": lambda p: write_raster(p, np.random.rand(3, 128, 128).astype(np.float32), "EPSG:32632",
                                       Affine(10, 0, 0, 0, -10, 0)),             # GDAL only prints it
}
for name, write in writers.items():
    try:
        write(os.path.join(full, name))
        print(name, "written")
    except OSError as err:
        print(name, errno.errorcode.get(err.errno), err.filename)
print("left", sorted(os.listdir(full)))
"""


def test_a_full_disk_is_enospc_naming_the_file_whatever_the_writer(tmp_path):
    if not can_mount(tmp_path):
        pytest.skip("needs root and mount namespaces (unshare -m) for a real full file system")
    full = tmp_path / "full"
    full.mkdir()
    done = subprocess.run(in_namespace(f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(full))}",
                                       [sys.executable, "-c", FULL_DISK_SCRIPT, str(full)]),
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for name in ("model.pt", "table.csv", "mask.tif"):
        assert f"{name} ENOSPC {full / name}" in lines, done.stdout
    assert "left []" in lines  # nothing truncated put in place, no temporary left behind
