"""The training loop on real phantom data + cache + tiny models, and the trial config."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from vlsm import checkpoint as ckpt
from vlsm.axes import (
    BEST_VAL_DICE,
    EPOCH,
    IMAGES_PER_S,
    SECONDS,
    STOP_REASON,
    TEST_DICE_MEAN,
    VAL_DICE,
)
from vlsm.config import TrainConfig
from vlsm.models import INIT_SEED
from vlsm.train import resolve_precision, run_training
from vlsm.train_state import EarlyStopping

TIMING = {SECONDS, IMAGES_PER_S}


@pytest.fixture
def caches(phantom_caches) -> dict[str, Path]:
    return phantom_caches


def _cfg(caches, **overrides) -> TrainConfig:
    from vlsm.models import tiny_config

    model = overrides.pop("model", "clipseg")
    values = dict(
        model=model, model_config=tiny_config(model), train_cache=str(caches["train"]),
        val_cache=str(caches["val"]), test_cache=str(caches["test"]), lr=3e-3, batch_size=8,
        max_epochs=3, min_epochs=1, prompt="P2",
    )
    return TrainConfig.from_dict({**values, **overrides})


class _Recorder:
    """A report callable that keeps the metrics and copies every checkpoint folder."""

    def __init__(self, keep: Path, stop_after: int | None = None):
        self.keep, self.stop_after, self.metrics, self.dirs = keep, stop_after, [], []

    def __call__(self, metrics, directory):
        self.metrics.append(metrics)
        if directory is not None:
            dst = self.keep / f"report{len(self.metrics):03d}"
            shutil.copytree(directory, dst)
            self.dirs.append(dst)
        if self.stop_after is not None and metrics[EPOCH] == self.stop_after:
            raise KeyboardInterrupt("simulated kill")  # like a preempted trial


def _strip(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


# --- config -----------------------------------------------------------------------------


def test_config_unknown_keys_and_bad_values_are_all_named():
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict({"modle": "clipseg", "learning_rate": 1.0, "batch_size": "big", "prompt": "P9"})
    message = str(err.value)
    assert "'learning_rate'" in message and "'modle'" in message and "batch_size" in message
    with pytest.raises(ValueError, match=r"prompt: expected one of \['P0', .*'P7'\], got 'P9'"):
        TrainConfig.from_dict({"prompt": "P9"})
    with pytest.raises(ValueError, match="threshold: expected 0 < value < 1, got 1.5"):
        TrainConfig(threshold=1.5)
    with pytest.raises(ValueError, match=r"model: expected one of \[.*'clipseg'.*\], got 'unet'"):
        TrainConfig(model="unet")
    with pytest.raises(ValueError, match="checkpoint_interval_s: expected a finite value >= 0, got -1.0"):
        TrainConfig(checkpoint_interval_s=-1)


def test_config_paper_defaults_and_round_trip():
    from vlsm.model_registry import model_entry

    paper = model_entry("CLIPSeg").paper
    assert (paper.lr, paper.batch_size) == (2e-3, 128)
    clipseg = TrainConfig.from_dict({"model": "CLIPSeg"})
    assert (clipseg.model, clipseg.lr, clipseg.batch_size) == ("clipseg", 2e-3, 128)
    cris = TrainConfig.from_dict({"model": "CRIS"})
    assert (cris.model, cris.lr, cris.batch_size, cris.eval_batch_size) == ("cris", 2e-5, 32, 32)
    cfg = TrainConfig.from_dict({"model": "clipseg", "lr": 1, "cell_id": "clipseg-real-frozen-p1"})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert (cfg.weight_decay, cfg.patience, cfg.min_delta, cfg.grad_clip) == (1e-3, 20, 1e-4, 0.5)


def test_early_stopping_rules():
    stop = EarlyStopping(patience=2, min_delta=0.1, min_epochs=5)
    assert not stop.update(0.5, 1)
    assert not stop.update(0.55, 2)  # not > best + min_delta
    assert not stop.update(0.55, 3)  # patience reached, but epoch < min_epochs
    assert stop.update(0.55, 5)
    assert stop.best == 0.5


def test_data_goes_to_the_gpu_only_when_it_fits_the_trials_share():
    from vlsm.trial_data import DEVICE_DATA_FRACTION, keep_on_device

    gib = 2**30
    share = 24 * gib * 0.125  # a frozen CLIPSeg trial's eighth of an A10G
    assert not keep_on_device(2 * gib, share, wanted=True)  # SDM train split at 352 px: streams
    assert keep_on_device(int(DEVICE_DATA_FRACTION * share), share, wanted=True)
    assert keep_on_device(2 * gib, 80 * gib * 0.25, wanted=True)  # a quarter of an H100
    assert keep_on_device(2 * gib, None, wanted=True)  # CPU: no device budget
    assert not keep_on_device(1, share, wanted=False)  # data_on_device=False always streams


def test_precision_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", cpu)


def test_a_state_saved_without_a_grad_scaler_resumes_where_one_is_on(tmp_path):
    # bf16 or fp32 save an empty scaler; Ray may restore the trial on a GPU where "auto"
    # means fp16 (grad scaler on): the state loads, with a fresh scaler
    from vlsm.train_state import TrainState

    cfg, cpu = TrainConfig(), torch.device("cpu")
    params = [torch.nn.Parameter(torch.ones(3))]
    TrainState.fresh(params, cfg, cpu, "bf16").save(tmp_path)
    fp16 = TrainState.fresh(params, cfg, cpu, "fp16")
    assert fp16.scaler.is_enabled()
    fp16.load(tmp_path)
    assert fp16.scaler.get_scale() == 65536.0  # torch's initial scale


def test_auto_precision_on_a_gpu_is_bf16_only_where_it_is_native(monkeypatch):
    # torch.cuda.is_bf16_supported() is True on a V100 or T4 too (emulated bf16, slow):
    # "auto" must ask for native bf16 and take fp16 with a grad scaler there (the fake
    # says True only when emulation counts)
    cuda = torch.device("cuda")  # a device object: nothing touches a GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", cuda) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100, H100
    assert resolve_precision("auto", cuda) == "bf16"
    assert resolve_precision("fp32", cuda) == "fp32"


# --- the loop ---------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_model_learns_phantom(caches, tmp_path):
    # Tiny CRIS with Dice only (the authors' effective loss) learns fastest from scratch
    # on 60 items: about 0.13 -> 0.55 validation Dice in 6 epochs.
    cfg = _cfg(caches, model="cris", max_epochs=6, lr=1e-3, batch_size=4, bce_weight=0.0)
    rec = _Recorder(tmp_path)
    result = run_training(cfg, rec)
    dice = [m[VAL_DICE] for m in rec.metrics]
    assert len(rec.metrics) == 6 and result.stop_reason == "max_epochs"
    assert result.best_val_dice > dice[0] + 0.25 and result.best_val_dice > 0.4, dice
    assert rec.metrics[-1][BEST_VAL_DICE] == max(dice)
    final = rec.dirs[-1]
    per_image = pd.read_parquet(final / ckpt.PER_IMAGE_FILE)
    assert len(per_image) == 12 and set(per_image.structure) == {"LV", "MYO", "LA"}
    assert rec.metrics[-1][TEST_DICE_MEAN] == pytest.approx(per_image.dice.mean())
    best_meta = json.loads((final / ckpt.BEST_DIR / "metrics.json").read_text())
    assert best_meta[VAL_DICE] == result.best_val_dice


def test_exact_resume(caches, tmp_path):
    # CRIS has dropout: resuming must restore the RNG too, not only weights and optimizer.
    cfg = _cfg(caches, model="cris", max_epochs=3, batch_size=12, lr=1e-3, checkpoint_interval_s=0)
    full = _Recorder(tmp_path / "full")
    run_training(cfg, full)

    first = _Recorder(tmp_path / "first", stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, first)
    resumed = _Recorder(tmp_path / "resumed")
    run_training(cfg, resumed, resume_dir=first.dirs[-1])

    assert [m[EPOCH] for m in resumed.metrics] == [2, 3]
    assert [_strip(m) for m in resumed.metrics] == [_strip(m) for m in full.metrics[1:]]
    a, b = full.dirs[-1], resumed.dirs[-1]
    for sub in ("", ckpt.BEST_DIR):
        assert (a / sub / ckpt.WEIGHTS_FILE).read_bytes() == (b / sub / ckpt.WEIGHTS_FILE).read_bytes()
    assert (a / ckpt.TRAIN_STATE_TENSORS).read_bytes() == (b / ckpt.TRAIN_STATE_TENSORS).read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(a / ckpt.PER_IMAGE_FILE), pd.read_parquet(b / ckpt.PER_IMAGE_FILE))


def _train_state(directory: Path) -> dict:
    """train_state.json without the timing keys of its last report."""
    state = json.loads((directory / ckpt.TRAIN_STATE_JSON).read_text())
    state["last_metrics"] = _strip(state["last_metrics"])
    return state


def test_exact_resume_while_the_scheduler_and_early_stopping_act(caches, tmp_path):
    # lr 1e-2 makes the validation loss rise at epochs 2 and 3: with lr_patience 1 the
    # scheduler halves the rate after epoch 3, counting a bad epoch from before the kill;
    # min_delta 1 means no epoch after the first improves, so early stopping ends the run
    # at epoch 4 with a count carried across the kill. Forgetting to restore either (or
    # the RNG: CRIS has dropout) changes what comes after.
    cfg = _cfg(caches, model="cris", max_epochs=6, batch_size=12, lr=1e-2, lr_patience=1,
               lr_factor=0.5, patience=3, min_delta=1.0, checkpoint_interval_s=0)
    full = _Recorder(tmp_path / "full")
    result = run_training(cfg, full)
    first = _Recorder(tmp_path / "first", stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, first)
    at_kill = _train_state(first.dirs[-1])
    assert at_kill["epoch"] == 2 and at_kill["scheduler"]["num_bad_epochs"] == 1
    assert at_kill["early_stopping"]["wait"] == 1  # both had changed state before the kill
    resumed = _Recorder(tmp_path / "resumed")
    run_training(cfg, resumed, resume_dir=first.dirs[-1])

    assert result.stop_reason == "early_stopping" and [m[EPOCH] for m in full.metrics] == [1, 2, 3, 4]
    assert full.metrics[-1]["lr"] == cfg.lr / 2 and full.metrics[2]["lr"] == cfg.lr  # halved after epoch 3
    assert [_strip(m) for m in resumed.metrics] == [_strip(m) for m in full.metrics[2:]]
    a, b = full.dirs[-1], resumed.dirs[-1]
    assert _train_state(a) == _train_state(b)
    for name in (ckpt.WEIGHTS_FILE, f"{ckpt.BEST_DIR}/{ckpt.WEIGHTS_FILE}", ckpt.TRAIN_STATE_TENSORS):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_parquet(a / ckpt.PER_IMAGE_FILE), pd.read_parquet(b / ckpt.PER_IMAGE_FILE))


def test_best_holds_the_best_epochs_weights_and_a_finetune_starts_from_them(caches, tmp_path):
    # lr 3e-2 overshoots: validation Dice peaks at epoch 1 and the run goes on to epoch 4,
    # so the best weights and the last ones differ.
    upstream = _Recorder(tmp_path / "up")
    result = run_training(_cfg(caches, model="cris", max_epochs=4, batch_size=12, lr=3e-2, test_cache=None),
                          upstream)
    dice = [m[VAL_DICE] for m in upstream.metrics]
    assert result.best_epoch == 1 < len(dice) == 4 and dice[-1] < dice[0] == result.best_val_dice
    final = upstream.dirs[-1]
    assert json.loads((final / ckpt.BEST_DIR / "metrics.json").read_text())[EPOCH] == 1
    best, last = (ckpt.load_model(d).state_dict() for d in (final / ckpt.BEST_DIR, final))
    assert any(not torch.equal(best[k], last[k]) for k in best)
    # a finetune from best/ with a vanishing learning rate keeps the best epoch's parameters
    # (BatchNorm statistics still move in train mode, so parameters only)
    finetune = _Recorder(tmp_path / "ft")
    run_training(_cfg(caches, model="cris", max_epochs=1, batch_size=12, lr=1e-12, test_cache=None,
                      init_from=str(final / ckpt.BEST_DIR)), finetune)
    tuned = ckpt.load_model(finetune.dirs[-1])
    names = [name for name, _ in tuned.named_parameters()]
    tuned = tuned.state_dict()

    def distance(reference: dict) -> float:
        return max((tuned[k] - reference[k]).abs().max().item() for k in names)

    assert distance(best) < 1e-6 < 1e-2 < distance(last)


# --- checkpoints on a clock ------------------------------------------------------------


class _Ticking:
    """A clock that moves `step` seconds at every reading. The loop reads it once before
    the first epoch and once per epoch, so every epoch seems to take `step` seconds."""

    def __init__(self, step: float):
        self.step, self.now = step, 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _epoch_of(directory: Path) -> int:
    return json.loads((directory / ckpt.TRAIN_STATE_JSON).read_text())["epoch"]


def _same_files(a: Path, b: Path) -> None:
    assert _train_state(a) == _train_state(b)
    for name in (ckpt.WEIGHTS_FILE, f"{ckpt.BEST_DIR}/{ckpt.WEIGHTS_FILE}", ckpt.TRAIN_STATE_TENSORS,
                 f"{ckpt.BEST_DIR}/metrics.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_parquet(a / ckpt.PER_IMAGE_FILE), pd.read_parquet(b / ckpt.PER_IMAGE_FILE))


def test_short_epochs_write_one_checkpoint_at_the_end_with_the_results_of_one_per_epoch(caches, tmp_path):
    # lr 3e-2 overshoots: the best epoch is the first, which under the default policy
    # (600 s, epochs of 1 s) has no checkpoint of its own; best/ must still hold its weights.
    cfg = _cfg(caches, model="cris", max_epochs=4, batch_size=12, lr=3e-2)
    assert cfg.checkpoint_interval_s == TrainConfig().checkpoint_interval_s == 600
    every = _Recorder(tmp_path / "every")
    run_training(TrainConfig.from_dict({**cfg.to_dict(), "checkpoint_interval_s": 0}), every)
    default = _Recorder(tmp_path / "default")
    result = run_training(cfg, default, clock=_Ticking(1.0))

    assert [_epoch_of(d) for d in every.dirs] == [1, 2, 3, 4]  # interval 0: every epoch
    assert [_epoch_of(d) for d in default.dirs] == [4]  # one checkpoint, at the end
    assert [_strip(m) for m in default.metrics] == [_strip(m) for m in every.metrics]
    _same_files(every.dirs[-1], default.dirs[-1])
    assert result.best_epoch == 1
    best = default.dirs[-1] / ckpt.BEST_DIR
    assert json.loads((best / "metrics.json").read_text())[EPOCH] == 1
    for name in (ckpt.WEIGHTS_FILE, ckpt.MODEL_SPEC_FILE):  # the weights epoch 1 ended with
        assert (best / name).read_bytes() == (every.dirs[0] / name).read_bytes(), name


def test_a_trial_killed_between_checkpoints_ends_with_the_metrics_of_one_never_killed(caches, tmp_path):
    # The scheduler and early stopping act (see the test above with a kill after epoch
    # 2): a run of 4 epochs that early stopping ends. Epochs of 400 s with the interval at
    # 600 s: checkpoints after epochs 2 and 4 (the end). Killed after epoch 3, the trial
    # resumes from epoch 2 and runs epoch 3 again: reported twice, alike both times.
    cfg = _cfg(caches, model="cris", max_epochs=6, batch_size=12, lr=1e-2, lr_patience=1,
               lr_factor=0.5, patience=3, min_delta=1.0, checkpoint_interval_s=600)
    full = _Recorder(tmp_path / "full")
    result = run_training(cfg, full, clock=_Ticking(400.0))
    first = _Recorder(tmp_path / "first", stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, first, clock=_Ticking(400.0))
    resumed = _Recorder(tmp_path / "resumed")
    run_training(cfg, resumed, resume_dir=first.dirs[-1], clock=_Ticking(400.0))

    assert result.stop_reason == "early_stopping" and [m[EPOCH] for m in full.metrics] == [1, 2, 3, 4]
    assert [_epoch_of(d) for d in full.dirs] == [2, 4] and [_epoch_of(d) for d in first.dirs] == [2]
    assert [m[EPOCH] for m in resumed.metrics] == [3, 4]
    assert [_strip(m) for m in resumed.metrics] == [_strip(m) for m in full.metrics[2:]]
    seen = {m[EPOCH]: _strip(m) for m in first.metrics + resumed.metrics}  # one per epoch, the last
    assert list(seen.values()) == [_strip(m) for m in full.metrics]
    assert _strip(first.metrics[2]) == _strip(resumed.metrics[0])  # the replayed epoch, alike
    _same_files(full.dirs[-1], resumed.dirs[-1])  # best epoch, test Dice, per-image rows


def test_unfrozen_clipseg_trains_its_towers_through_the_grid_and_the_loop(caches, tmp_path):
    # From the sweep's own mapping (a cell's encoder mode -> its trial config) through
    # run_training: unfrozen, both CLIP towers change; frozen, they stay bit-identical
    # (and are not even stored).
    from sweeps.grid import expand_grid
    from sweeps.spec import load_spec
    from sweeps.trials import trial_config

    spec = load_spec(demo=True, overrides=["grid.models=[CLIPSeg]", "grid.prompts=[P2]", "grid.strategies=[real]",
                                           "train.max_epochs=1"])
    splits = {split: str(path) for split, path in caches.items()}
    for cell in expand_grid(spec):
        config = trial_config(spec, cell, {"camus": {"CLIPSeg": splits}})
        rec = _Recorder(tmp_path / cell.encoder)
        run_training(TrainConfig.from_dict({**config, "test_cache": None}), rec)
        trained = ckpt.load_model(rec.dirs[-1]).state_dict()
        initial = ckpt.rebuild(json.loads((rec.dirs[-1] / ckpt.MODEL_SPEC_FILE).read_text())["spec"]).state_dict()
        for tower in ("clip.vision_model.", "clip.text_model."):
            changed = [k for k in initial if k.startswith(tower) and not torch.equal(initial[k], trained[k])]
            if cell.encoder == "unfrozen":
                assert len(changed) > 10, (tower, changed)
            else:
                assert changed == [], (tower, changed)
        decoder = [k for k in initial if k.startswith("decoder.") and not torch.equal(initial[k], trained[k])]
        assert decoder  # the decoder trains in both modes


def test_resuming_a_finished_trial_reports_its_result_without_a_new_checkpoint(caches, tmp_path):
    # Ray may restore a trial that finished just before the driver died: it must not
    # train or test again, nor replace the checkpoint finetunes start from.
    cfg = _cfg(caches, model="cris", max_epochs=1, batch_size=12, lr=1e-3)
    done = _Recorder(tmp_path / "done")
    run_training(cfg, done)
    again = _Recorder(tmp_path / "again")
    run_training(cfg, again, resume_dir=done.dirs[-1])
    assert len(again.metrics) == 1 and again.dirs == []
    final = done.metrics[-1]
    assert again.metrics[0][TEST_DICE_MEAN] == pytest.approx(final[TEST_DICE_MEAN])
    assert again.metrics[0][EPOCH] == final[EPOCH]


def test_synthetic_trial_is_tested_with_the_prompts_it_learned(tmp_path):
    # Synthetic P6 = P5 + shape; a real image's P6 = P5 + image quality. A model trained
    # on SDM is tested on real CAMUS with the synthetic phrasing (as the authors did).
    from vlsm.data.cache import prepare_dataset
    from vlsm.data.phantom import write_demo_data

    demo = write_demo_data(tmp_path / "demo", seed=1, n_patients=4, n_test=1, n_val=1, sdm_per_image=1,
                           size=(64, 56))
    camus = prepare_dataset("camus", demo.camus_root, 64, tmp_path / "cache", n_val=1, progress=False)
    sdm = prepare_dataset("sdm", demo.sdm_root, 64, tmp_path / "cache", n_val=1, camus_root=demo.camus_root,
                          progress=False)
    cfg = _cfg({"train": sdm["train"], "val": sdm["val"], "test": camus["test"]}, prompt="P6", max_epochs=1)
    rec = _Recorder(tmp_path / "keep")
    run_training(cfg, rec)
    prompts = pd.read_parquet(rec.dirs[-1] / ckpt.PER_IMAGE_FILE)["prompt"]
    assert prompts.str.contains(" shape ").all() and not prompts.str.contains("image quality").any()


def test_loader_path_equals_device_path_and_frozen_checkpoint(caches, tmp_path):
    common = dict(max_epochs=1, freeze_encoder=True, test_cache=None)
    on_device = _Recorder(tmp_path / "a")
    run_training(_cfg(caches, data_on_device=True, **common), on_device)
    streamed = _Recorder(tmp_path / "b")
    run_training(_cfg(caches, data_on_device=False, **common), streamed)
    assert _strip(on_device.metrics[0]) == _strip(streamed.metrics[0])
    meta = json.loads((streamed.dirs[-1] / ckpt.MODEL_SPEC_FILE).read_text())
    assert meta["frozen"] and not set(meta["frozen"]) & set(meta["stored"])
    seed = _cfg(caches).seed
    assert meta["spec"]["init_seed"] == meta["init_seed"] == seed != INIT_SEED  # the trial's seed
    ckpt.load_model(streamed.dirs[-1] / ckpt.BEST_DIR)  # re-derives the frozen encoder, seed included


def test_non_finite_loss_stops_and_is_never_best(caches, tmp_path, monkeypatch):
    import vlsm.train as train_module
    from vlsm.losses import DiceBCELoss

    class NaNLoss(DiceBCELoss):
        def forward(self, logits, target):
            return super().forward(logits, target) * math.nan

    monkeypatch.setattr(train_module, "DiceBCELoss", NaNLoss)
    rec = _Recorder(tmp_path)
    result = run_training(_cfg(caches, max_epochs=5), rec)
    assert len(rec.metrics) == 1 and result.stop_reason.startswith("non-finite train_loss at epoch 1")
    assert rec.metrics[0][STOP_REASON] == result.stop_reason
    assert result.best_val_dice == -math.inf and result.best_epoch == 0
    assert math.isnan(rec.metrics[0][TEST_DICE_MEAN])
    assert not (rec.dirs[-1] / ckpt.BEST_DIR).exists()


def test_init_from_loads_weights_only(caches, tmp_path):
    upstream = _Recorder(tmp_path / "up")
    run_training(_cfg(caches, max_epochs=1, test_cache=None), upstream)
    best = upstream.dirs[-1] / ckpt.BEST_DIR
    rec = _Recorder(tmp_path / "ft")
    run_training(_cfg(caches, max_epochs=1, test_cache=None, init_from=str(best), lr=0.0 + 1e-12), rec)
    # lr ~ 0: the finetune's weights stay the upstream's best; its optimizer starts fresh
    state = json.loads((rec.dirs[-1] / ckpt.TRAIN_STATE_JSON).read_text())
    assert state["epoch"] == 1 and state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-12)
    up = ckpt.load_model(best).state_dict()
    ft = ckpt.load_model(rec.dirs[-1]).state_dict()
    assert max((up[k].float() - ft[k].float()).abs().max().item() for k in up) < 1e-6


def test_a_real_plus_synthetic_trial_trains_on_its_share_with_provenance_prompts(tmp_path):
    # One cache of real and SDM training pairs (the strategy real+synthetic): an epoch
    # trains every real pair and as many synthetic ones as the share asks, and every
    # prompt says whether its image is real or synthetic.
    from vlsm.data.cache import load_records, open_split, prepare_records
    from vlsm.data.phantom import write_demo_data
    from vlsm.data.prompts import DEFAULT_PROVENANCE_PHRASES
    from vlsm.trial_data import PromptTable

    demo = write_demo_data(tmp_path / "demo", seed=0, n_patients=6, n_test=1, n_val=1, sdm_per_image=2)
    records = [r for kind, root in (("camus", demo.camus_root), ("sdm", demo.sdm_root))
               for r in load_records(kind, root, "paper", 1, demo.camus_root if kind == "sdm" else None)
               if r.split == "train"]
    mixed = prepare_records(records, 64, tmp_path / "cache", name="camus+sdm", progress=False)["train"]
    split = open_split(mixed)
    real_pairs = sum(not it.synthetic for it in split.items)
    assert 0 < real_pairs < len(split.items)
    real = prepare_records([r for r in load_records("camus", demo.camus_root, "paper", 1) if r.split == "val"],
                           64, tmp_path / "cache", name="camus", progress=False)["val"]
    cfg = _cfg({"train": mixed, "val": real, "test": real}, max_epochs=1, synthetic_share=0.5,
               provenance_phrases=DEFAULT_PROVENANCE_PHRASES, prompt="P2")
    result = run_training(cfg, lambda m, d: None)
    assert result.stop_reason == "max_epochs" and math.isfinite(result.history[-1]["train_loss"])
    table = PromptTable([split], "p2", lambda t: {"input_ids": [[0]] * len(t), "attention_mask": [[1]] * len(t)},
                        torch.device("cpu"), synthetic_style=True, provenance=DEFAULT_PROVENANCE_PHRASES)
    assert all(t.endswith(("in a real cardiac ultrasound.", "in a synthetic cardiac ultrasound.")) for t in table.texts)
    assert any("synthetic cardiac" in t for t in table.texts) and any("real cardiac" in t for t in table.texts)


def test_a_synthetic_trial_can_be_prompted_with_its_generators_text(tmp_path):
    # --prompt-source generator: DiffEcho images are prompted "<structure> in <its text>."
    # in training and validation; the real test images keep the cell's prompt.
    from vlsm.data.cache import open_split, prepare_dataset
    from vlsm.data.phantom import write_demo_data
    from vlsm.trial_data import PromptTable

    demo = write_demo_data(tmp_path / "demo", seed=0, n_patients=6, n_test=1, n_val=1,
                           synthetic_formats=("diffecho",))
    synthetic = prepare_dataset("diffecho", demo.synthetic_roots["diffecho"], 64, tmp_path / "cache", n_val=1,
                                progress=False)
    real = prepare_dataset("camus", demo.camus_root, 64, tmp_path / "cache", n_val=1, progress=False)
    cfg = _cfg({"train": synthetic["train"], "val": synthetic["val"], "test": real["test"]}, max_epochs=1,
               prompt_source="generator", prompt="P2")
    assert run_training(cfg, lambda m, d: None).stop_reason == "max_epochs"

    def tokenizer(t):
        return {"input_ids": [[0]] * len(t), "attention_mask": [[1]] * len(t)}

    splits = [open_split(synthetic["train"]), open_split(real["test"])]
    table = PromptTable(splits, "p2", tokenizer, torch.device("cpu"), synthetic_style=True, generator=True)
    rows = table.choose(splits[0].items, None).tolist() + table.choose(splits[1].items, None).tolist()
    texts = [table.texts[r] for r in rows]
    # every epoch's choice reads the values worked out once at construction
    table._phrasings = lambda *a, **k: pytest.fail("an item's prompt worked out again")
    assert table.choose(splits[0].items, None).tolist() + table.choose(splits[1].items, None).tolist() == rows
    n_train = len(splits[0].items)
    assert all(" in an ultrasound image of heart in " in t for t in texts[:n_train])
    assert all(" view of the heart." in t for t in texts[n_train:])  # P2, as the cell says
