"""The one atomic write: all or nothing, also when the process dies between the write and the rename."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sscr.fsutil import atomic_path, temporary_path, write_text


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
