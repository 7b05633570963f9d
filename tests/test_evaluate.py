"""Evaluation that encodes each image once for its structures equals the plain path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from vlsm.config import TrainConfig


@pytest.fixture
def caches(phantom_caches) -> dict[str, dict[str, Path]]:
    """The phantom cache for each tiny model (both take 64 px)."""
    from vlsm.models import input_size, tiny_config

    assert {input_size(m, tiny_config(m)) for m in ("clipseg", "cris")} == {64}
    return dict.fromkeys(("clipseg", "cris"), phantom_caches)


def _setup(model_name: str, frozen: bool, caches: dict[str, Path], shared: bool, stock: bool = False):
    """(model, validation data, EvalSetup) of a tiny model, as `run_training` builds them."""
    from vlsm.evaluate import EvalSetup
    from vlsm.losses import DiceBCELoss
    from vlsm.models import build_model, build_tokenizer, tiny_config
    from vlsm.trial_data import PromptTable, SplitTensors, open_cache

    # eval batch 5: the three structures of some images fall into two batches
    config = {**tiny_config(model_name), **({"stock_forward_no_grad_encoders": True} if stock else {})}
    cfg = TrainConfig(model=model_name, model_config=config, freeze_encoder=frozen,
                      prompt="P3", eval_batch_size=5, shared_image_eval=shared, precision="fp32")
    device = torch.device("cpu")
    split = open_cache(str(caches["val"]), "val_cache")
    tokenizer = build_tokenizer(model_name, config=cfg.model_config)
    prompts = PromptTable([split], "p3", tokenizer, device)
    model = build_model(model_name, config=cfg.model_config, freeze_encoder=frozen, init_seed=3)
    setup = EvalSetup(prompts, DiceBCELoss(), cfg, "fp32", device)
    return model, SplitTensors(split, cfg, device, with_eval=True), setup


@pytest.mark.parametrize("frozen", [False, True], ids=["unfrozen", "frozen"])
@pytest.mark.parametrize("model_name", ["clipseg", "cris", "clipseg-stock"])
def test_each_image_encoded_once_gives_the_results_of_one_forward_per_structure(caches, model_name, frozen,
                                                                                monkeypatch):
    from vlsm.evaluate import evaluate

    stock = model_name == "clipseg-stock"  # the authors' setting: the towers without gradients
    model_name = model_name.removesuffix("-stock")
    model, data, plain_setup = _setup(model_name, frozen, caches[model_name], shared=False, stock=stock)
    _, _, shared_setup = _setup(model_name, frozen, caches[model_name], shared=True, stock=stock)
    encoded, real = [], model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda pixels: (encoded.append(len(pixels)), real(pixels))[1])
    plain_loss, plain_rows = evaluate(model, data, plain_setup, with_hausdorff=True)
    pairs = len(data)  # the validation images x 3 structures
    assert sum(encoded) == pairs == 3 * data.split.n_images  # the switch off: every pair's image
    encoded.clear()
    shared_loss, shared_rows = evaluate(model, data, shared_setup, with_hausdorff=True)
    assert sum(encoded) < pairs and len(encoded) == -(-pairs // 5)  # on: each image of a batch (5 a batch) once
    assert shared_rows == plain_rows  # the same Dice, IoU and Hausdorff, row by row
    assert shared_loss == plain_loss

    inputs = shared_setup.inputs_for(model)
    rows = shared_setup.prompts.choose(data.split.items, None)
    with torch.no_grad():
        for idx, images, _, _ in data.batches(torch.arange(len(data)), 7):
            assert data.image_index[idx].unique().numel() < len(idx)  # some image has several structures
            plain = inputs(model, images, rows[idx], data.image_index[idx])
            once = inputs(model, images, rows[idx], data.image_index[idx], shared=True)
            assert plain.shape == once.shape == (len(idx), 1, model.input_size, model.input_size)
            if model_name == "clipseg":
                assert torch.equal(once, plain)
            else:  # CRIS's trunk convolutions round by batch size: encoding fewer images moves the last bits
                torch.testing.assert_close(once, plain, rtol=0, atol=1e-5)


def test_the_best_weights_are_tested_with_the_trials_speed_switches(caches, tmp_path, monkeypatch):
    # An ablation trial (eager attention, the whole vision tower) validates on that path;
    # its best weights, loaded again for the test, run the same path.
    from vlsm import checkpoint as ckpt
    from vlsm import evaluate as ev
    from vlsm.trial_data import open_cache

    model, _, setup = _setup("clipseg", False, caches["clipseg"], shared=True)
    setup = dataclasses.replace(setup, cfg=dataclasses.replace(setup.cfg, attention="eager", vision_stop_early=False))
    ckpt.save_model(model, tmp_path / "best")
    tested = []
    real = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda m, *a, **k: (tested.append(m), real(m, *a, **k))[1])
    summary, rows = ev.evaluate_best(tmp_path / "best", open_cache(str(caches["clipseg"]["test"]), "test_cache"),
                                     setup, tmp_path)
    assert len(tested) == 1 and len(rows) == 12
    assert tested[0].config._attn_implementation == "eager" and not tested[0].vision_stop_early
