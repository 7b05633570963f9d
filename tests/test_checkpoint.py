"""Checkpoint round trips: weights (frozen / unfrozen), optimizer state, RNG states."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from vlsm import checkpoint as ckpt
from vlsm import integrity


def _tiny(freeze: bool) -> nn.Module:
    from vlsm.models import build_model, tiny_config

    return build_model("clipseg", config=tiny_config("clipseg"), freeze_encoder=freeze)


def _step(model: nn.Module) -> None:
    """One optimizer step on random data, so the weights differ from the build."""
    torch.manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    size = model.input_size
    ids = torch.randint(0, 10, (2, 8))
    logits = model(torch.randn(2, 3, size, size), ids, torch.ones_like(ids))
    logits.mean().backward()
    opt.step()


@pytest.mark.parametrize("freeze", [True, False])
def test_model_round_trip(tmp_path, freeze):
    model = _tiny(freeze)
    _step(model)
    ckpt.save_model(model, tmp_path)
    meta = json.loads((tmp_path / ckpt.MODEL_SPEC_FILE).read_text())
    frozen = ckpt.frozen_names(model)
    if freeze:
        assert frozen and all(name.startswith("clip.") for name in frozen)
        assert not set(frozen) & set(meta["stored"])  # frozen tensors are not stored
        assert meta["frozen_sha256"] == ckpt.frozen_fingerprint(model)
    else:
        assert frozen == [] and set(meta["stored"]) == set(model.state_dict())
    loaded = ckpt.load_model(tmp_path)
    expected = model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert ckpt.frozen_names(loaded) == frozen


def test_frozen_mismatch_is_detected(tmp_path):
    model = _tiny(True)
    _step(model)
    ckpt.save_model(model, tmp_path)
    meta = json.loads((tmp_path / ckpt.MODEL_SPEC_FILE).read_text())
    meta["frozen_sha256"] = "0" * 64  # as if the pretrained encoder had changed
    (tmp_path / ckpt.MODEL_SPEC_FILE).write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="frozen_sha256 mismatch"):
        ckpt.load_model(tmp_path)


def test_include_frozen_stores_everything(tmp_path):
    model = _tiny(True)
    with torch.no_grad():  # a frozen encoder that a rebuild cannot re-derive
        next(p for n, p in model.named_parameters() if n.startswith("clip.")).add_(1.0)
    ckpt.save_model(model, tmp_path, include_frozen=True)
    loaded = ckpt.load_model(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_load_weights_into_and_mismatch(tmp_path):
    model = _tiny(False)
    _step(model)
    ckpt.save_model(model, tmp_path)
    fresh = _tiny(True)  # a frozen finetune from an unfrozen upstream
    ckpt.load_weights_into(fresh, tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    with pytest.raises(ckpt.CheckpointError, match="missing"):
        ckpt.load_model(tmp_path / "nowhere")


def test_train_state_round_trip(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 1, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=5)
    for _ in range(2):
        net(torch.randn(2, 1, 8, 8)).mean().backward()
        opt.step()
        sched.step(1.0)
    tensors, opt_meta = ckpt.optimizer_to_flat(opt.state_dict())
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    rng_tensors, rng_meta = ckpt.capture_rng()
    expected_draws = (random.random(), np.random.rand(), torch.rand(1).item())
    meta = {"optimizer": opt_meta, "scheduler": sched.state_dict(), "rng": rng_meta}
    ckpt.save_train_state(tmp_path, {**tensors, **rng_tensors}, meta)

    loaded_tensors, loaded_meta = ckpt.load_train_state(tmp_path)
    state = ckpt.optimizer_from_flat(loaded_tensors, loaded_meta["optimizer"])
    original = opt.state_dict()
    assert state["param_groups"] == original["param_groups"]
    for index, per_param in original["state"].items():
        for key, value in per_param.items():
            assert torch.equal(state["state"][index][key], value)
    opt2 = torch.optim.AdamW(net.parameters(), lr=1.0)
    opt2.load_state_dict(state)  # loads without pickles
    sched2 = torch.optim.lr_scheduler.ReduceLROnPlateau(opt2)
    sched2.load_state_dict(loaded_meta["scheduler"])
    assert sched2.state_dict() == sched.state_dict()
    ckpt.restore_rng(loaded_tensors, loaded_meta["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_draws


# --- corruption at rest: a manifest of sizes and hashes, written last, checked on load ---------

def _written_by_the_loop(folder: Path, freeze: bool = False) -> Path:
    """A checkpoint folder as the training loop writes one (weights, state, config, best/ with
    its tokenizer and metrics), returned."""
    from vlsm.config import TrainConfig
    from vlsm.models import build_tokenizer, tiny_config
    from vlsm.train import _TrialFiles
    from vlsm.train_state import TrainState

    model = _tiny(freeze)
    _step(model)
    cfg = TrainConfig(model="clipseg", model_config=tiny_config("clipseg"), freeze_encoder=freeze)
    trial = SimpleNamespace(model=model, include_frozen=False, frozen_sha=ckpt.frozen_fingerprint(model), cfg=cfg,
                            tokenizer=build_tokenizer("clipseg", config=tiny_config("clipseg")))
    files = _TrialFiles(folder, trial)
    files.keep_best({"epoch": 1, "val_dice": 0.5})
    state = TrainState.fresh([p for p in model.parameters() if p.requires_grad], cfg, torch.device("cpu"), "fp32")
    return files.save(state)


def _damage(path: Path, how: str) -> None:
    """Truncate the file to half, or flip one bit of its middle byte (a tensor's data in a
    safetensors file, whose header still parses)."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        del data[len(data) // 2:]
    else:
        data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def loop_checkpoint(tmp_path_factory) -> Path:
    return _written_by_the_loop(tmp_path_factory.mktemp("loop"))


@pytest.fixture
def checkpoint(loop_checkpoint, tmp_path) -> Path:
    """A copy of the loop's checkpoint folder, this test's to damage."""
    copy = tmp_path / "checkpoint"
    shutil.copytree(loop_checkpoint, copy)
    return copy


DAMAGEABLE = (ckpt.WEIGHTS_FILE, ckpt.TRAIN_STATE_TENSORS, ckpt.TRAIN_STATE_JSON, ckpt.MODEL_SPEC_FILE,
              ckpt.CONFIG_FILE, f"{ckpt.BEST_DIR}/{ckpt.WEIGHTS_FILE}", f"{ckpt.BEST_DIR}/metrics.json")


def test_the_loop_seals_each_checkpoint_and_best_hashed_once(checkpoint):
    folder = checkpoint
    listed = json.loads((folder / ckpt.MANIFEST_FILE).read_text())["files"]
    assert set(listed) == {ckpt.WEIGHTS_FILE, ckpt.MODEL_SPEC_FILE, ckpt.TRAIN_STATE_TENSORS, ckpt.TRAIN_STATE_JSON,
                           ckpt.CONFIG_FILE, f"{ckpt.BEST_DIR}/{ckpt.MANIFEST_FILE}"}  # best/ by its own manifest
    best = json.loads((folder / ckpt.BEST_DIR / ckpt.MANIFEST_FILE).read_text())["files"]
    assert {ckpt.WEIGHTS_FILE, ckpt.MODEL_SPEC_FILE, "metrics.json"} <= set(best)
    assert any(name.startswith(f"{ckpt.TOKENIZER_DIR}/") for name in best)
    ckpt.verify(folder)  # as written: no error
    assert ckpt.resumable(folder)


@pytest.mark.parametrize(("name", "how"), [*((name, "flipped") for name in DAMAGEABLE),
                                           *((name, "truncated") for name in DAMAGEABLE[:3])])
def test_a_damaged_checkpoint_file_is_never_resumed_from(checkpoint, caplog, name, how):
    folder = checkpoint
    _damage(folder / name, how)
    with caplog.at_level("WARNING", logger="vlsm.checkpoint"):
        assert not ckpt.resumable(folder, "clipseg-real-unfrozen-p1")
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "\n" not in line and line.startswith(f"cell clipseg-real-unfrozen-p1: {folder / name}: damaged")
    assert line.endswith("the trial trains again from its start")


@pytest.mark.parametrize("name", [ckpt.WEIGHTS_FILE, ckpt.MODEL_SPEC_FILE, "metrics.json"])
def test_damaged_best_weights_are_never_loaded_nor_started_from(checkpoint, name):
    best = checkpoint / ckpt.BEST_DIR
    _damage(best / name, "flipped")
    with pytest.raises(ckpt.CheckpointError, match=f"^{best / name}: damaged .*not loaded: restore") as err:
        ckpt.load_model(best)  # vlsm.predictor, the MLflow model, the test of the best epoch
    assert "\n" not in str(err.value)
    with pytest.raises(ckpt.CheckpointError, match=f"^init_from {best / name}: damaged .*upstream") as err:
        ckpt.load_weights_into(_tiny(True), best)  # a finetune starting from its upstream's best
    assert "\n" not in str(err.value)


def test_a_checkpoint_written_before_manifests_still_loads_unverified(checkpoint):
    folder = checkpoint
    for manifest in folder.rglob(ckpt.MANIFEST_FILE):
        manifest.unlink()
    assert ckpt.resumable(folder)
    ckpt.load_model(folder / ckpt.BEST_DIR)


@pytest.mark.parametrize("algorithm", integrity.ALGORITHMS)
def test_either_checksum_algorithm_verifies_and_detects_the_same(tmp_path, algorithm):
    (tmp_path / "a.bin").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "b.json").write_text('{"x": 1}')
    integrity.write_manifest(tmp_path, ["a.bin", "b.json"], algorithm)
    assert integrity.verify_manifest(tmp_path) == []
    _damage(tmp_path / "a.bin", "flipped")
    assert [bad.name for bad in integrity.verify_manifest(tmp_path)] == ["a.bin"]
    (tmp_path / "b.json").unlink()
    assert [bad.why for bad in integrity.verify_manifest(tmp_path)][1] == "missing"
    (tmp_path / integrity.MANIFEST_FILE).write_text("{")  # the manifest itself damaged
    assert [bad.name for bad in integrity.verify_manifest(tmp_path)] == [integrity.MANIFEST_FILE]


def test_a_trial_resumed_from_a_damaged_checkpoint_trains_again_from_its_start(phantom_caches, tmp_path, caplog):
    from vlsm.axes import EPOCH, IMAGES_PER_S, SECONDS
    from vlsm.config import TrainConfig
    from vlsm.models import tiny_config
    from vlsm.train import run_training

    cfg = TrainConfig.from_dict({
        "model": "clipseg", "model_config": tiny_config("clipseg"), "train_cache": str(phantom_caches["train"]),
        "val_cache": str(phantom_caches["val"]), "test_cache": None, "lr": 1e-3, "batch_size": 32,
        "max_epochs": 2, "min_epochs": 1, "prompt": "P2", "checkpoint_interval_s": 0, "cell_id": "clipseg-real-p2"})
    kept, reports = tmp_path / "kept", []

    def killed_after_epoch_1(metrics, directory):
        reports.append({k: v for k, v in metrics.items() if k not in (SECONDS, IMAGES_PER_S)})
        shutil.copytree(directory, kept)
        raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, killed_after_epoch_1)
    _damage(kept / ckpt.TRAIN_STATE_TENSORS, "flipped")  # an optimizer moment or an RNG state
    resumed = []
    with caplog.at_level("WARNING", logger="vlsm.checkpoint"):
        run_training(cfg, lambda metrics, directory: resumed.append(metrics), resume_dir=kept)
    assert [m[EPOCH] for m in resumed] == [1, 2]  # from its start, not from the damaged state
    assert {k: v for k, v in resumed[0].items() if k not in (SECONDS, IMAGES_PER_S)} == reports[0]
    assert f"cell clipseg-real-p2: {kept / ckpt.TRAIN_STATE_TENSORS}: damaged" in caplog.text


def test_integrity_errors_survive_pickling_as_ray_sends_them() -> None:
    import pickle

    err = integrity.CorruptFile("/x/images.npy", "cut short", "rebuild it")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is integrity.CorruptFile and str(back) == str(err) and back.problem == "cut short"
