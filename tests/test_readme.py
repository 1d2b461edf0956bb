"""The README's runnable blocks, as written, in order, on a fresh clone (issue 22: the README drifted from the code).

Every shell block between ``<!-- readme:run -->`` and ``<!-- /readme:run -->`` is meant to run on
the embedded default after the ones before it; this test runs them so, command by command, and
checks that each did what the README says. What it does differently from a user, and why:

- **Smaller data.** The clone's ``params.yaml`` gets the overrides of ``tests/tiny.py`` (the
  blocks never name it), so the pipeline runs in seconds; the commands are the README's text.
- **No install.** ``python3 -m venv``, ``. .venv/bin/activate`` and ``pip install`` are skipped:
  the test runs in the environment the test command (README block 2, ``.ci/run``) installed the
  same way; that environment's ``bin`` comes first on ``PATH``.
- **Free ports.** The README's ports 4200, 5000 and 5001 become free ports (the machine may be
  using them); nothing else in a command is changed.
- **Servers in the background.** A command that serves (``mlflow ui``, ``sscr serve``,
  ``prefect server start``, ``python -m flows.deploy``) is what the README runs "in a second
  shell": it is started in the background, the test waits until it answers, and it is stopped
  at the end. ``export NAME=VALUE`` carries over to the commands after it, as in one shell.
- **Own homes.** ``PREFECT_HOME`` is a temporary folder and ``MLFLOW_TRACKING_URI`` is unset.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from test_pipeline import make_clone

from servers import free_port, stop_group, wait_until_up
from tiny import TINY

REPO = Path(__file__).resolve().parents[1]

BLOCK = re.compile(r"<!-- readme:run -->\s*```bash\n(.*?)```\s*<!-- /readme:run -->", re.S)
INSTALL = re.compile(r"^(python3 -m venv \S+|\. \S+/bin/activate|pip install .*)$")
SERVERS = {"mlflow ui": "/health", "sscr serve": "/ping", "prefect server start": "/api/health",
           "python -m flows.deploy": None}
README_PORTS = (4200, 5000, 5001)


def readme_commands(text: str) -> list[list[str]]:
    """The marked blocks' commands: continued lines joined, ``a && b`` split, blank lines left out."""
    blocks = []
    for body in BLOCK.findall(text):
        joined = re.sub(r"\\\n\s*", "", body)
        blocks.append([part.strip() for line in joined.splitlines() if line.strip()
                       for part in line.split(" && ")])
    return blocks


def test_readme_marks_the_blocks_of_every_section_this_test_stands_for():
    """The marks are where the README's runnable walk-through is: quick start, whole scenes, serving, Prefect."""
    commands = [command for block in readme_commands((REPO / "README.md").read_text()) for command in block]
    for expected in ("dvc repro", "dvc exp run", "mlflow ui", "sscr data demo-scene", "sscr infer", "sscr serve",
                     "sscr serving-request", "curl", "prefect server start", "python -m flows.deploy",
                     "prefect deployment ls", "prefect deployment run"):
        assert any(command.split("#")[0].strip().startswith(expected) or f" {expected}" in command
                   for command in commands), expected


def _server_kind(command: str) -> str | None:
    code = command.split("#")[0]
    return next((kind for kind in SERVERS if kind in code), None)


def _wait_for_deployments(api: str, server: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stdout.read()[-3000:] if server.stdout else "flows.deploy exited"
        try:
            found = requests.post(f"{api}/deployments/filter", json={"limit": 50, "offset": 0, "sort": "NAME_ASC"},
                                  timeout=5).json()
            if sum(deployment["name"] == "sscr" for deployment in found) >= 3:
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(2)
    pytest.fail(f"the three deployments were not served within {timeout:.0f} s")


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_readme_blocks_run_as_written_on_a_fresh_clone(tmp_path):
    clone = make_clone(tmp_path / "clone", TINY)
    ports = {port: free_port() for port in README_PORTS}
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    env.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]]),
               PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="false")
    outputs: dict[str, str] = {}
    seconds: dict[str, float] = {}
    servers: list[subprocess.Popen] = []
    skipped = []
    try:
        for block in readme_commands((REPO / "README.md").read_text()):
            for command in block:
                command = re.sub(r"\b(4200|5000|5001)\b", lambda m: str(ports[int(m.group(1))]), command)
                if INSTALL.match(command):
                    skipped.append(command)
                elif command.startswith("export "):
                    name, _, value = command.removeprefix("export ").partition("=")
                    env[name] = shlex.split(value)[0] if value else ""
                elif (kind := _server_kind(command)) is not None:
                    server = subprocess.Popen(["bash", "-c", command], cwd=clone, env=dict(env), text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
                    servers.append(server)
                    if SERVERS[kind] is None:
                        _wait_for_deployments(env["PREFECT_API_URL"], server)
                    else:
                        port = re.search(r"--port (\d+)", command).group(1)
                        wait_until_up(f"http://127.0.0.1:{port}{SERVERS[kind]}", server)
                else:
                    started = time.monotonic()
                    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=clone, env=dict(env),
                                          capture_output=True, text=True, timeout=1200)
                    seconds[command] = round(time.monotonic() - started, 1)
                    assert done.returncode == 0, (f"README command failed: {command}\n{done.stdout[-3000:]}\n"
                                                  f"{done.stderr[-3000:]}")
                    outputs[command] = done.stdout + done.stderr
    finally:
        for server in reversed(servers):
            stop_group(server)
        # what each command printed and how long it took, for whoever reads a failure
        (tmp_path / "readme_outputs.json").write_text(json.dumps({"seconds": seconds, "outputs": outputs}, indent=1))

    assert skipped == ["python3 -m venv .venv", ". .venv/bin/activate", "pip install -e ."]

    def output(start: str, nth: int = 0) -> str:
        return [text for command, text in outputs.items() if command.startswith(start)][nth]

    # Quick start: the five stages, then a second repro with nothing to do, an experiment beside the baseline
    assert all(f"Running stage '{stage}'" in output("dvc repro") for stage in
               ("download", "cloudmasks", "train", "evaluate", "register"))
    assert "validation 1/2: PSNR" in output("dvc repro")  # training prints its validation scores
    assert "Data and pipelines are up to date" in output("dvc repro", 1)
    assert "test_cloudy" in output("dvc metrics show") and (clone / "dvc_plots/index.html").is_file()
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=clone,
                          capture_output=True, text=True, check=True).stdout.split()
    # refs/exps/<baseline commit>/<name>; the Prefect run saved its own, pipeline-<flow run>; exec/ is DVC's
    tried = [ref.rsplit("/", 1)[1] for ref in refs if "/exec/" not in ref and "/pipeline-" not in ref]
    assert len(tried) == 1 and tried[0] in output("dvc exp show")
    # Whole scenes: the COG and the quick-look of the demo scene
    report = json.loads(next(line for line in output("sscr infer").splitlines() if line.startswith('{"size"')))
    assert report["size"] == [384, 384] and report["quicklook"] == "demo/quicklook.png"
    assert (clone / "demo/clear.tif").is_file() and (clone / "demo/quicklook.png").read_bytes()[:4] == b"\x89PNG"
    # Serving: the response of the served champion to the request written from a test patch (64 px here)
    assert re.fullmatch(r"\{'mean': \(\(1, 13, 64, 64\), [0-9.e-]+, [0-9.e-]+\)\}\n", output("python -c")), \
        output("python -c")
    # Prefect: the CLI lists and inspects the served deployments and runs the pipeline to completion
    assert all(name in output("prefect deployment ls") for name in ("pipeline/sscr", "promote/sscr", "tune/sscr"))
    assert "'name': 'sscr'" in output("prefect deployment inspect")
    assert "Completed" in output("prefect deployment run")
