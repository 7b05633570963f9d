"""What checkpoints cost a trial: how many are written, and their bytes, per policy.

    .venv/bin/python bench/checkpoint_cost.py [--epochs 60] [--epoch-s 4 20] [--models clipseg cris] [--quick]

One full checkpoint's bytes, write seconds and the seconds its manifest's hashes take (sha256,
blake2b; `vlsm.integrity`) at full size, and the count a trial writes per
`checkpoint_interval_s` in the real loop on a clock (bench/README.md); Ray's copy comes on top.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.full_size, run as a script

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "checkpoint_cost.json"
POLICIES = (0.0, 600.0)  # checkpoint_interval_s: every epoch, the default


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under folder (hard links counted each time: Ray copies them)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def full_checkpoint(model_name: str, frozen: bool, out: Path) -> dict:
    """Write one full-size checkpoint as the loop does; its bytes and write seconds."""
    import torch

    from bench.full_size import build_full_size
    from vlsm import checkpoint as ckpt
    from vlsm.atomic import write_json_atomic
    from vlsm.config import TrainConfig
    from vlsm.train_state import TrainState

    model = build_full_size(model_name, frozen=frozen)
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = TrainConfig(model=model_name, freeze_encoder=frozen)
    state = TrainState.fresh(params, cfg, torch.device("cpu"), "fp32")
    for p in params:
        p.grad = torch.zeros_like(p)
    state.optimizer.step()  # creates the AdamW moments
    best = ckpt.host_copy(model)
    sha = ckpt.frozen_fingerprint(model)  # the loop computes it once per trial
    started = time.perf_counter()
    ckpt.save_model(model, out / ckpt.BEST_DIR, tensors=best, frozen_sha256=sha)
    ckpt.save_model(model, out, frozen_sha256=sha)
    state.save(out)
    write_json_atomic(out / ckpt.CONFIG_FILE, cfg.to_dict())
    seconds = time.perf_counter() - started
    hash_s = seal_seconds(out)
    parts = {
        "weights": (out / ckpt.WEIGHTS_FILE).stat().st_size,
        "train_state": (out / ckpt.TRAIN_STATE_TENSORS).stat().st_size,
        "best": folder_bytes(out / ckpt.BEST_DIR),
    }
    return {"model": model_name, "encoder": "frozen" if frozen else "unfrozen",
            "trained_parameters": sum(p.numel() for p in params), "bytes": folder_bytes(out),
            "parts": parts, "write_s": seconds, "hash_s": hash_s}


def seal_seconds(out: Path) -> dict[str, float]:
    """Seconds to seal a checkpoint as the loop does (best/ when written, then the folder, which
    lists best/ by its manifest), per algorithm (`vlsm.integrity.ALGORITHMS`), and to verify it
    as a resume does. The files were just written: read from the page cache."""
    from vlsm import checkpoint as ckpt
    from vlsm import integrity

    seconds = {}
    for algorithm in sorted(integrity.ALGORITHMS, key=lambda a: a == integrity.ALGORITHM):  # default last
        started = time.perf_counter()
        ckpt.seal(out / ckpt.BEST_DIR, algorithm)
        ckpt.seal(out, algorithm)
        seconds[algorithm] = time.perf_counter() - started
    started = time.perf_counter()
    ckpt.verify(out)  # its default-algorithm manifests, written last
    seconds["verify"] = time.perf_counter() - started
    return seconds


class EpochClock:
    """A clock on which every epoch takes epoch_s: the loop reads it once before the first
    epoch and once per epoch."""

    def __init__(self, epoch_s: float):
        self.epoch_s, self.now = epoch_s, 0.0

    def __call__(self) -> float:
        self.now += self.epoch_s
        return self.now


def count_checkpoints(caches: dict[str, Path], epochs: int, epoch_s: float, interval_s: float,
                      work_dir: Path) -> int:
    """Reports with a checkpoint in one run of the loop (tiny frozen CLIPSeg)."""
    from vlsm.config import TrainConfig
    from vlsm.models import tiny_config
    from vlsm.train import run_training

    cfg = TrainConfig.from_dict({
        "model": "clipseg", "model_config": tiny_config("clipseg"), "freeze_encoder": True,
        "train_cache": str(caches["train"]), "val_cache": str(caches["val"]), "test_cache": None,
        "max_epochs": epochs, "min_epochs": epochs, "patience": epochs, "precision": "fp32",
        "batch_size": 32, "checkpoint_interval_s": interval_s,
    })
    written = []
    run_training(cfg, lambda metrics, directory: written.append(directory is not None), None,
                 device="cpu", work_dir=work_dir, clock=EpochClock(epoch_s))
    return sum(written)


def print_tables(full: list[dict], trials: list[dict], epochs: int) -> None:
    gb = 1e9
    print(f"\none full checkpoint at full size (random weights), written to {tempfile.gettempdir()}")
    print(f"{'model':<8} {'encoder':<9} {'trained M':>9} {'GB':>6} {'weights':>8} {'state':>7} "
          f"{'best':>6} {'write s':>8} {'sha256 s':>8} {'blake2b s':>9} {'verify s':>8}")
    for row in full:
        parts, hashing = row["parts"], row["hash_s"]
        print(f"{row['model']:<8} {row['encoder']:<9} {row['trained_parameters'] / 1e6:>9.1f} "
              f"{row['bytes'] / gb:>6.2f} {parts['weights'] / gb:>8.2f} {parts['train_state'] / gb:>7.2f} "
              f"{parts['best'] / gb:>6.2f} {row['write_s']:>8.1f} {hashing['sha256']:>8.2f} "
              f"{hashing['blake2b']:>9.2f} {hashing['verify']:>8.2f}")
    print(f"\na trial of {epochs} epochs: checkpoints written (counted in the loop) and their cost")
    print(f"{'epoch s':>7} {'interval s':>10} {'checkpoints':>11} " +
          " ".join(f"{r['model'][:4]}-{r['encoder'][:2]} GB / s".rjust(17) for r in full))
    for trial in trials:
        print(f"{trial['epoch_s']:>7.0f} {trial['checkpoint_interval_s']:>10.0f} {trial['checkpoints']:>11d} " +
              " ".join(f"{c['bytes'] / gb:>8.1f} / {c['write_s']:>6.0f}" for c in trial["cost"]))


def main(argv: list[str] | None = None) -> int:
    from vlsm.model_registry import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60, help="epochs per trial (default 60, "
                        "the sweep's run.expected_epochs)")
    parser.add_argument("--epoch-s", type=float, nargs="+", default=[4.0, 20.0],
                        help="seconds an epoch takes (default 4 20: real CAMUS, SDM on an H100)")
    parser.add_argument("--models", nargs="+", choices=MODELS.names(), default=list(MODELS.names()))
    parser.add_argument("--quick", action="store_true", help="unfrozen CLIPSeg only, 20 epochs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.epochs = ["clipseg"], 20
    modes = (False,) if args.quick else (False, True)

    import torch

    from vlsm.data.cache import prepare_dataset
    from vlsm.data.phantom import write_demo_data

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-cost-") as tmp:
        full = []
        for model in args.models:
            for frozen in modes:
                out = Path(tmp) / f"{model}-{frozen}"
                full.append(full_checkpoint(model, frozen, out))
                shutil.rmtree(out)  # free the disk at once
        demo = write_demo_data(Path(tmp) / "demo", seed=0, n_patients=4, n_test=1, n_val=1, size=(64, 56))
        caches = prepare_dataset("camus", demo.camus_root, 64, Path(tmp) / "cache", n_val=1, progress=False)
        counts = {(e, i): count_checkpoints(caches, args.epochs, e, i, Path(tmp))
                  for e in args.epoch_s for i in POLICIES}

    trials = [{"epoch_s": epoch_s, "checkpoint_interval_s": interval_s, "epochs": args.epochs, "checkpoints": n,
               "cost": [{"model": r["model"], "encoder": r["encoder"], "bytes": n * r["bytes"],
                         "write_s": n * r["write_s"]} for r in full]}
              for (epoch_s, interval_s), n in counts.items()]
    print_tables(full, trials, args.epochs)
    from bench.result_file import write_result

    write_result(args.out, {"benchmark": "checkpoint_cost", "full_size": full, "trials": trials})
    return 0


if __name__ == "__main__":
    sys.exit(main())
