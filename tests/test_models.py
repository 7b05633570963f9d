"""The registry contract every model follows (CLIPSeg and CRIS through `vlsm.models`)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
import torch

from vlsm.models import (
    build_model,
    build_tokenizer,
    input_size,
    save_pretrained_folder,
    tiny_config,
)

MODELS = ["clipseg", "cris"]
PROMPTS = ["", "Left ventricular cavity of the heart.", "Left atrium cavity in four-chamber view."]


def _batch(name: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    tok = build_tokenizer(name, config=tiny_config(name))
    gen = torch.Generator().manual_seed(0)
    s = model.input_size
    return {"pixel_values": torch.randn(len(PROMPTS), 3, s, s, generator=gen), **tok(PROMPTS)}


def _snapshot(model: torch.nn.Module) -> tuple[dict, dict]:
    """(encoder tensors, other tensors), parameters and buffers, split by encoder_prefixes."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    enc = {k: v for k, v in state.items() if k.startswith(model.encoder_prefixes)}
    rest = {k: v for k, v in state.items() if k not in enc}
    assert enc and rest
    return enc, rest


def _one_step(model: torch.nn.Module, batch: dict) -> None:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    logits = model(**batch)
    target = torch.zeros_like(logits)
    target[..., : logits.shape[-1] // 2] = 1
    torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
    opt.step()


def test_names_come_from_the_registry():
    from vlsm.model_registry import MODELS, model_names

    assert MODELS.names() == ("clipseg", "cris")
    assert model_names() == ("CLIPSeg", "CRIS") == tuple(e.name for e in MODELS)
    with pytest.raises(ValueError, match=r"model 'unet' not found; available models = \['clipseg', 'cris'\]"):
        build_model("unet", config={})
    with pytest.raises(ValueError, match="available models"):
        tiny_config("CLIP")
    assert tiny_config("CLIPSeg") == tiny_config("clipseg")  # display names work too


@pytest.fixture
def toy():
    """The toy model (tests/toy_model.py) registered for one test, then removed."""
    import toy_model

    entry = toy_model.register()
    yield entry
    toy_model.unregister()


def test_a_registered_entry_is_seen_everywhere_at_call_time(toy):
    from vlsm.config import TrainConfig
    from vlsm.model_registry import MODELS
    from vlsm.models.tokenizer import TINY_CONTEXT_LENGTH

    assert MODELS.names() == ("clipseg", "cris", "toy") and MODELS["Toy"] is toy
    model = build_model("Toy", config={"input_size": 32, "width": 4}, init_seed=7)
    assert model.spec["init_seed"] == 7 and model.input_size == 32
    assert tiny_config("toy") == {"input_size": 64, "width": 8} and input_size("toy", {"input_size": 16}) == 16
    cfg = TrainConfig.from_dict({"model": "Toy"})
    assert (cfg.model, cfg.lr, cfg.batch_size) == ("toy", 1e-2, 8)  # its paper defaults
    assert build_tokenizer("toy").max_length == TINY_CONTEXT_LENGTH  # its text shape: the tiny tokenizer


@pytest.fixture
def caches(phantom_caches) -> dict:
    return phantom_caches


def test_a_toy_model_is_one_registry_entry_and_trains(toy, caches, monkeypatch):
    """The toy entry trains through the loop every trial runs: unfrozen, and frozen with the
    feature store (its encode_image stored, read back) giving exactly what it gives without."""
    from pathlib import Path

    from vlsm import feature_store as fs
    from vlsm.axes import IMAGES_PER_S, SECONDS
    from vlsm.config import TrainConfig
    from vlsm.train import run_training

    gathered = []
    real_gather = fs.SplitFeatures.gather
    monkeypatch.setattr(fs.SplitFeatures, "gather", lambda self, i: (gathered.append(self.folder), real_gather(self, i))[1])

    def run(**switches):
        cfg = TrainConfig.from_dict({"model": "Toy", "model_config": tiny_config("toy"), "max_epochs": 2, "min_epochs": 1,
                                     "train_cache": str(caches["train"]), "val_cache": str(caches["val"]),
                                     "test_cache": str(caches["test"]), "prompt": "P2", **switches})
        result = run_training(cfg, lambda metrics, directory: None, device="cpu")
        return [{k: v for k, v in h.items() if k not in (SECONDS, IMAGES_PER_S)} for h in result.history], result

    unfrozen, _ = run(freeze_encoder=False)
    assert not gathered and all(math.isfinite(h["train_loss"]) for h in unfrozen)
    stored, with_store = run(freeze_encoder=True)  # feature_store None: on, the encoder frozen
    assert {Path(p).name.split(".features-")[0] for p in gathered} == {Path(caches[s]).name for s in caches}
    plain, without = run(freeze_encoder=True, feature_store=False)
    assert stored == plain and with_store.test_rows == without.test_rows and len(with_store.test_rows) == 12
    assert stored != unfrozen  # the frozen towers did not train


def test_importing_the_registry_does_not_import_torch():
    code = "import sys, vlsm.models; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("name", MODELS)
def test_contract(name):
    cfg = tiny_config(name)
    model = build_model(name, config=cfg)
    assert isinstance(model.input_size, int) and 32 <= model.input_size <= 128
    for stats in (model.image_mean, model.image_std):
        assert (
            isinstance(stats, tuple)
            and len(stats) == 3
            and all(isinstance(v, float) for v in stats)
        )
    spec = json.loads(json.dumps(model.spec))
    assert spec["name"] == name and spec["config"] == cfg and spec["freeze_encoder"] is False
    assert {"pretrained", "config", "freeze_encoder"} <= spec.keys()
    assert model.freeze_encoder is False
    keys = model.state_dict().keys()
    assert all(any(k.startswith(p) for k in keys) for p in model.encoder_prefixes)

    batch = _batch(name, model)
    assert batch["input_ids"].shape[1] == build_tokenizer(name, config=cfg).max_length
    model.eval()
    with torch.no_grad():
        logits = model(**batch)
    s = model.input_size
    assert logits.shape == (len(PROMPTS), 1, s, s) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()

    assert input_size(name, cfg) == model.input_size  # known before building

    rebuilt = build_model(**spec)
    a, b = model.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", MODELS)
def test_init_seed_governs_the_random_init_and_is_kept_in_the_spec(name):
    cfg = tiny_config(name)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    seven = build_model(name, config=cfg, init_seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    assert seven.spec["init_seed"] == 7
    again = build_model(**json.loads(json.dumps(seven.spec)))
    other = build_model(name, config=cfg, init_seed=8)
    a, b, c = seven.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", MODELS)
def test_unfrozen_step_trains_the_encoders(name):
    model = build_model(name, config=tiny_config(name), freeze_encoder=False)
    batch = _batch(name, model)
    enc0, rest0 = _snapshot(model)
    _one_step(model, batch)
    enc1, rest1 = _snapshot(model)
    changed = [k for k in enc0 if not torch.equal(enc0[k], enc1[k])]
    assert len(changed) > len(enc0) // 3, (
        f"only {len(changed)} of {len(enc0)} encoder tensors changed"
    )
    assert any(not torch.equal(rest0[k], rest1[k]) for k in rest0)


@pytest.mark.parametrize("name", MODELS)
def test_frozen_step_leaves_the_encoders_bit_identical(name):
    model = build_model(name, config=tiny_config(name), freeze_encoder=True)
    assert model.freeze_encoder and model.spec["freeze_encoder"] is True
    batch = _batch(name, model)
    enc0, rest0 = _snapshot(model)
    _one_step(model, batch)
    enc1, rest1 = _snapshot(model)
    assert [k for k in enc0 if not torch.equal(enc0[k], enc1[k])] == []  # buffers included
    assert any(not torch.equal(rest0[k], rest1[k]) for k in rest0)
    frozen = [p for n, p in model.named_parameters() if n.startswith(model.encoder_prefixes)]
    assert frozen and not any(p.requires_grad for p in frozen)


@pytest.mark.parametrize("name", MODELS)
def test_tiny_models_are_small_and_fast(name):
    torch.manual_seed(0)
    model = build_model(name, config=tiny_config(name))
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    batch = _batch(name, model)
    batch = {k: torch.cat([v, v, v])[:8] for k, v in batch.items()}  # a batch of 8
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several threads on a busy 2-core machine run 10-20x slower
    try:
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            model(**batch).mean().backward()
            timings.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    # forward + backward: about 0.04 s (CLIPSeg) and 0.06 s (CRIS) on one core; generous
    # for a busy CI machine
    assert min(timings) < 0.5, timings


def test_save_pretrained_folder_is_clipseg_only(tmp_path):
    class NotCLIPSeg(torch.nn.Module):
        spec = {"name": "cris"}

    with pytest.raises(ValueError, match="only CLIPSeg"):
        save_pretrained_folder(NotCLIPSeg(), None, tmp_path / "x")


def test_input_size_without_building(tmp_path):
    assert input_size("clipseg", None, pretrained="CIDAS/clipseg-rd64-refined") == 352
    assert (
        input_size("clipseg", {"input_size": 224}, pretrained="CIDAS/clipseg-rd64-refined") == 224
    )
    (tmp_path / "config.json").write_text('{"vlsm_input_size": 96}')
    assert input_size("clipseg", None, pretrained=tmp_path) == 96
    assert input_size("cris", None) == 416
    with pytest.raises(ValueError, match="unknown key"):
        input_size("clipseg", {"inputsize": 64})
