"""ray_cluster.yaml, offline: Ray's own cluster-config validation, and what `ray up` would
do with it (what it copies, what every node installs, auth, profiles, the state volume).
Nothing here reaches AWS."""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "ray_cluster.yaml"
LOCK = REPO / "requirements-lock.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^=\s;]+)$")
# What runs on a node (the project, its sweep specs, what pip needs to install it, the lock).
RUNS = {"vlsm", "sweeps", "analysis", "search_spaces", "pyproject.toml", "README.md", "Makefile", LOCK.name}
TOKEN = "/home/ubuntu/.ray/auth_token"


def _config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _lock() -> dict[str, str]:
    """name (lower case) -> pinned version; fails on any line that is not `name==version`."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = PIN.match(line.strip())
        assert match, f"{LOCK.name}: {line!r} is not pinned with =="
        pins[match[1].lower()] = match[2]
    return pins


def _lock_python() -> str:
    match = re.search(r"^# python==(\S+)$", LOCK.read_text(), re.M)
    assert match, f"{LOCK.name} names no interpreter (# python==X.Y.Z)"
    return match[1]


def _workers(config: dict) -> dict[str, dict]:
    return {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}


def _head(config: dict) -> dict:
    return config["available_node_types"][config["head_node_type"]]


def _cluster_page() -> str:
    """docs/cluster.md, where the README sends a reader for the cluster."""
    return (REPO / "docs" / "cluster.md").read_text()


def test_ray_validates_the_cluster_config() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _config()
    validate_config(prepare_config(config))  # what `ray up` runs before it launches anything


def test_gpu_workers_autoscale_from_zero_and_the_head_has_no_gpu() -> None:
    config = _config()
    assert "GPU" not in _head(config).get("resources", {})
    workers = _workers(config).values()
    assert workers and all(n["resources"].get("GPU", 0) >= 1 and n["min_workers"] == 0 for n in workers)


def test_no_port_is_open_to_the_world() -> None:
    config = _config()
    # Ray's default security group opens SSH to 0.0.0.0/0; naming our own group avoids it.
    for node in config["available_node_types"].values():
        assert node["node_config"].get("SecurityGroupIds"), "every node type must name the cluster's security group"
    assert "0.0.0.0/0" not in yaml.safe_dump(config)  # comments aside, no rule names the world
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_mlflow_listens_on_the_heads_loopback_only() -> None:
    # no authentication, and only the driver on the head logs to it
    (command,) = [c for c in _config()["head_start_ray_commands"] if "mlflow server" in c]
    assert re.findall(r"--host\s+(\S+)", command) == ["127.0.0.1"]
    assert "--backend-store-uri sqlite:////home/ubuntu/state/" in command  # on the state volume
    # the cluster page's submit command and tunnel match
    page = _cluster_page()
    assert "--mlflow-uri http://127.0.0.1:5000" in page and "HEAD_PRIVATE_IP" not in page
    assert "ray dashboard ray_cluster.yaml --port 5000 --remote-port 5000" in page
    assert "-L 5000:127.0.0.1:5000" in page


def test_only_what_runs_is_copied_to_the_nodes() -> None:
    mounts = _config()["file_mounts"]
    sources = {remote: local for remote, local in mounts.items() if remote != TOKEN}
    assert {Path(local).name for local in sources.values()} == RUNS  # no `.`: no data/, runs/, secrets
    for remote, local in sources.items():
        assert (REPO / local).exists(), f"file_mounts {remote}: {local} is not in the checkout"
        assert remote == f"/home/ubuntu/vlsm/{Path(local).name}"


def test_every_node_runs_ray_with_the_clusters_token() -> None:
    config = _config()
    assert config["file_mounts"][TOKEN] == "~/.ray/auth_token"  # `ray get-auth-token --generate`
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
              for c in config[key] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    # the login shells of `ray submit` / `ray exec` too
    assert any("export RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in config["initialization_commands"])


def test_the_lock_pins_every_package_and_its_ray_is_the_installed_one() -> None:
    import ray

    pins = _lock()
    assert len(pins) > 50 and "torch" not in pins  # torch: per node type, below
    assert pins["ray"] == ray.__version__
    assert _lock_python() == platform.python_version()  # made from this interpreter's .venv


def test_every_node_installs_from_the_lock() -> None:
    config = _config()
    setup = config["setup_commands"]
    lock_at = next(i for i, c in enumerate(setup) if re.search(rf"pip install .*-r {LOCK.name}", c))
    project_at = next(i for i, c in enumerate(setup) if "pip install" in c and "--no-deps -e ." in c)
    assert lock_at < project_at
    assert not any("make setup" in c or ("pip install" in c and "-U" in c.split()) for c in setup)
    # the lock's interpreter, exactly (Ray refuses nodes whose Python differs in the patch level)
    venv = next(c for c in setup if "uv venv" in c)
    assert f"--python {_lock_python()} " in venv and "--managed-python" in venv
    assert f'platform.python_version() != "{_lock_python()}"' in venv  # an older .venv is replaced
    assert re.search(r"pip install .*uv==\S+", " ".join(setup))
    # the head too: `ray submit` runs python from a login shell that sources ~/.bashrc
    assert any(".venv/bin/activate" in c and ".bashrc" in c for c in setup)


def test_torch_is_the_makefiles_version_cpu_on_the_head_cuda_on_the_workers() -> None:
    config = _config()
    version = re.search(r"^TORCH_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)[1]
    head = [c for c in config["head_setup_commands"] if "torch==" in c]
    workers = [c for c in config["worker_setup_commands"] if "torch==" in c]
    assert len(head) == len(workers) == 1
    assert f"torch=={version}+cpu " in head[0] and "download.pytorch.org/whl/cpu" in head[0]
    assert f"torch=={version} " in workers[0] and "download.pytorch.org" not in workers[0]
    assert all(f"-c {LOCK.name}" in c for c in head + workers)  # torch's own deps stay at the lock's


def test_the_heads_extra_packages_are_pinned_too() -> None:
    (extra,) = [c for c in _config()["head_setup_commands"] if "boto3==" in c]
    packages = extra.split("pip install", 1)[1].split()
    named = [p for p in packages if not p.startswith("-") and p != LOCK.name]
    assert named and all(PIN.match(p) for p in named) and f"-c {LOCK.name}" in extra


def test_head_and_workers_have_separate_instance_profiles() -> None:
    config = _config()
    head = _head(config)["node_config"]["IamInstanceProfile"]
    workers = {str(t["node_config"]["IamInstanceProfile"]) for t in _workers(config).values()}
    assert head == {"Name": "vlsm-ray-head"} and workers == {str({"Name": "vlsm-ray-worker"})}


def test_the_cluster_pages_policies_give_workers_the_bucket_only() -> None:
    policies = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", _cluster_page(), re.S)]
    assert len(policies) == 2
    head, worker = policies

    def actions(policy: dict) -> set[str]:
        return {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}

    assert actions(worker) and all(a.startswith("s3:") for a in actions(worker))
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "iam:PassRole", "ec2:AttachVolume"} <= actions(head)
    (pass_role,) = [s for s in head["Statement"] if s["Action"] == "iam:PassRole"]
    assert pass_role["Resource"].endswith(":role/vlsm-ray-worker")
    for statement in head["Statement"]:
        if "ec2:TerminateInstances" in statement["Action"]:  # only this cluster's instances
            assert statement["Condition"]["StringEquals"]["ec2:ResourceTag/ray-cluster-name"] == _config()["cluster_name"]


def test_the_heads_state_outlives_it_on_a_volume() -> None:
    config = _config()
    (attach,) = [c for c in config["head_setup_commands"] if "attach_volume" in c]
    assert "mountpoint -q /home/ubuntu/state ||" in attach  # idempotent: `ray up` again is a no-op
    assert "VOLUME=vol-" in attach and "mkfs" in attach and "[ $FOUND = 2 ]" in attach  # formats a blank volume only
    assert _head(config)["node_config"].get("SubnetIds"), "the head must start in the volume's zone"
    assert "--output /home/ubuntu/state/runs/" in _cluster_page()


def test_gpu_workers_refuse_to_run_without_an_nvidia_driver() -> None:
    # a plain Ubuntu image has no driver: the trials would hold GPUs they cannot use; the
    # worker setup stops instead, before it installs the CUDA torch build
    config = _config()
    commands = config["worker_setup_commands"]
    check = next(i for i, c in enumerate(commands) if "nvidia-smi" in c and "exit 1" in c)
    assert check < next(i for i, c in enumerate(commands) if "torch==" in c)
    head_image = _head(config)["node_config"]["ImageId"]
    for name, node in _workers(config).items():
        assert node["node_config"]["ImageId"] != head_image, f"{name}: needs a GPU-driver image"
