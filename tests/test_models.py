"""The registry contract every model follows (CLIPSeg and CRIS through `vlsm.models`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from vlsm import axes
from vlsm.models import (
    MODEL_NAMES,
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


def _toy_build(*, pretrained=None, checkpoint=None, config=None, freeze_encoder=False):
    """A registry builder for `test_adding_a_model_is_one_registry_entry`."""
    model = torch.nn.Conv2d(3, 1, 1)
    model.spec = {"name": "toy", "config": config, "freeze_encoder": freeze_encoder}
    return model


def _toy_size(config, pretrained):
    return 8 * len(config or {})


def test_adding_a_model_is_one_registry_entry(monkeypatch):
    from vlsm.config import TrainConfig
    from vlsm.model_registry import MODEL_REGISTRY, LazyFunction, ModelEntry, PaperDefaults

    here = __name__
    entry = ModelEntry(
        key="toy", name="Toy",
        build=LazyFunction(here, "_toy_build"),
        input_size=LazyFunction(here, "_toy_size"),
        tiny_config=LazyFunction("builtins", "dict"),
        text_shape=LazyFunction("vlsm.models.cris", "text_shape"),
        paper=PaperDefaults(lr=0.5, batch_size=3),
    )
    monkeypatch.setitem(MODEL_REGISTRY, "toy", entry)
    model = build_model("Toy", config={"a": 1}, init_seed=7)
    assert isinstance(model, torch.nn.Conv2d) and model.spec["init_seed"] == 7
    assert tiny_config("toy") == {} and input_size("toy", {"a": 1, "b": 2}) == 16
    cfg = TrainConfig.from_dict({"model": "Toy"})
    assert (cfg.model, cfg.lr, cfg.batch_size) == ("toy", 0.5, 3)


def test_names_come_from_the_registry():
    from vlsm.model_registry import MODEL_REGISTRY

    assert MODEL_NAMES == ("clipseg", "cris") == tuple(MODEL_REGISTRY)
    assert axes.MODELS == ("CLIPSeg", "CRIS") == tuple(e.name for e in MODEL_REGISTRY.values())
    with pytest.raises(
        ValueError,
        match=r"model 'unet' not found; available models = \['CLIPSeg', 'CRIS', 'clipseg', 'cris'\]",
    ):
        build_model("unet", config={})
    with pytest.raises(ValueError, match="available models"):
        tiny_config("CLIP")
    assert tiny_config("CLIPSeg") == tiny_config("clipseg")  # display names work too


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
