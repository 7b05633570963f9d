"""Checkpoint round trips: weights (frozen / unfrozen), optimizer state, RNG states."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from vlsm import checkpoint as ckpt


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
