"""ray_cluster.yaml passes Ray's own cluster-config validation, offline."""

from __future__ import annotations

from pathlib import Path

import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


def _config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_ray_validates_the_cluster_config() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _config()
    validate_config(prepare_config(config))  # what `ray up` runs before it launches anything


def test_gpu_workers_autoscale_from_zero_and_the_head_has_no_gpu() -> None:
    config = _config()
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert "GPU" not in head.get("resources", {})
    workers = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert workers and all(n["resources"].get("GPU", 0) >= 1 and n["min_workers"] == 0 for n in workers)


def test_no_port_is_open_to_the_world() -> None:
    config = _config()
    # Ray's default security group opens SSH to 0.0.0.0/0; naming our own group avoids it.
    for node in config["available_node_types"].values():
        assert node["node_config"].get("SecurityGroupIds"), "every node type must name the cluster's security group"
    assert "0.0.0.0/0" not in yaml.safe_dump(config)  # comments aside, no rule names the world
    commands = " ".join(config["head_start_ray_commands"])
    assert "mlflow server" in commands and "--host 0.0.0.0" not in commands
    assert "--dashboard-host=127.0.0.1" in commands


def test_every_node_installs_the_project() -> None:
    config = _config()
    assert any("make setup" in c for c in config["setup_commands"])
    # the head too: `ray submit` runs python from a login shell that sources ~/.bashrc
    assert any(".venv/bin/activate" in c and ".bashrc" in c for c in config["setup_commands"])
    assert "." in config["file_mounts"].values()


def test_gpu_workers_refuse_to_run_without_an_nvidia_driver() -> None:
    # a plain Ubuntu image has no driver: `make setup` would pick CPU torch and the trials
    # would hold GPUs they cannot use; the worker setup stops instead
    config = _config()
    assert any("nvidia-smi" in c and "exit 1" in c for c in config["worker_setup_commands"])
    head_image = config["available_node_types"][config["head_node_type"]]["node_config"]["ImageId"]
    for name, node in config["available_node_types"].items():
        if name != config["head_node_type"]:
            assert node["node_config"]["ImageId"] != head_image, f"{name}: needs a GPU-driver image"
