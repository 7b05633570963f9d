"""The driver joins a real head, as on the cluster: `ray start --head --block` in its own
process (private HOME and temp dir, a free port, node address 127.0.0.1), then
`sweeps/paper_grid.py --address 127.0.0.1:<port>` on a tiny grid.

The head holds a token in ~/.ray/auth_token, so Ray 2.60 starts it with token
authentication on; `ray.init(address=...)` with RAY_AUTH_MODE unset would be refused
("Authentication token is missing or incorrect") unless the driver turns it on itself.
Ray's GCS listens on every interface whatever the node address; the token guards it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from analysis import schema

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "sweeps" / "paper_grid.py"
RAY = Path(sys.executable).with_name("ray")

# One trial (CRIS, real data, frozen encoder, P1) on 8 phantom patients at 64 x 56 px, 1 epoch.
TINY = [
    "--models", "CRIS", "--prompts", "P1", "--encoders", "frozen", "--strategies", "real",
    "--set", "data.demo_patients=8", "--set", "data.demo_test_patients=2",
    "--set", "data.val_patients=2", "--set", "data.demo_image_size=[64, 56]",
    "--set", "train.max_epochs=1", "--set", "train.min_epochs=1",
]
# What would decide the auth mode or the cluster for us instead of the node's token file.
RAY_CHOICES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(head: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block` (it stops the processes it started), then SIGKILL
    to any of them still alive, each by its pid."""
    try:
        started = psutil.Process(head.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait(timeout=10)
    _, alive = psutil.wait_procs(started, timeout=15)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture
def ray_head():
    """A token-authenticated head: (address, environment of a shell on that node)."""
    # Ray's socket paths (<temp>/session_<date>_<pid>/sockets/plasma_store) must stay
    # under 107 characters, which pytest's tmp_path would exceed.
    root = Path(tempfile.mkdtemp(prefix="vlsm-head-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in RAY_CHOICES}
    env.update(HOME=str(root / "home"), RAY_TMPDIR=str(root / "ray"), PYTHONUNBUFFERED="1")
    # The token a node holds once Ray wrote it (ray.init() or `ray get-auth-token --generate`).
    subprocess.run([str(RAY), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    port = _free_port()
    log = root / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            [str(RAY), "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
             "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
             "--temp-dir", str(root / "ray")],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"ray start not ready in 90 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        assert "Token authentication is enabled" in log.read_text(), log.read_text()[-3000:]
        yield f"127.0.0.1:{port}", env, root
    finally:
        _stop(head)
        shutil.rmtree(root, ignore_errors=True)


def test_the_driver_joins_a_head_that_requires_its_token(ray_head) -> None:
    address, env, root = ray_head
    output = root / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--address", address, "--storage", str(root / "storage"),
         "--output", str(output), *TINY],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = pd.read_parquet(output / schema.EXPORTS_DIR / schema.TRIALS_FILE)
    assert list(trials["trial_id"]) == ["cris-real-frozen-p1"] and list(trials["status"]) == ["done"]
