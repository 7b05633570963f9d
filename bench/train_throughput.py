"""Training throughput of the real loop: uint8 data on the device vs the DataLoader path.

    .venv/bin/python bench/train_throughput.py [--model clipseg|cris|all] [--quick] [--threads 1]

Tiny models on phantom CAMUS, each model frozen and unfrozen, both paths in one run; the
loop's `images_per_s`, median over epochs 2..N (bench/README.md). CUDA when present.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.*, run as a script

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "train_throughput.json"
PATHS = ((False, "loader"), (True, "on-device"))


def make_caches(root: Path, sizes: set[int], n_patients: int) -> dict[int, dict[str, Path]]:
    """Phantom CAMUS (n_patients - 4 train, 2 val, 2 test patients) prepared per input size."""
    from vlsm.data.cache import prepare_dataset
    from vlsm.data.phantom import write_demo_data

    demo = write_demo_data(root / "demo", seed=0, n_patients=n_patients, n_test=2, n_val=2,
                           sdm_per_image=1, size=(128, 112))
    return {s: prepare_dataset("camus", demo.camus_root, s, root / "cache", n_val=2, progress=False)
            for s in sorted(sizes)}


def measure(model: str, frozen: bool, on_device: bool, caches: dict[str, Path], args,
            device: str, work_dir: Path) -> dict:
    """One training run; the images/s of every epoch and their median over epochs 2..N."""
    from vlsm.axes import EPOCH, IMAGES_PER_S
    from vlsm.config import TrainConfig
    from vlsm.models import tiny_config
    from vlsm.train import run_training

    cfg = TrainConfig.from_dict({
        "model": model, "model_config": tiny_config(model), "train_cache": str(caches["train"]),
        "val_cache": str(caches["val"]), "test_cache": None, "prompt": "P1", "max_epochs": args.epochs,
        "min_epochs": 1, "precision": "fp32" if device == "cpu" else "auto", "batch_size": args.batch_size,
        "data_on_device": on_device, "freeze_encoder": frozen,
    })
    per_epoch: dict[int, float] = {}

    def report(metrics: dict, directory: Path | None) -> None:
        per_epoch[int(metrics[EPOCH])] = float(metrics[IMAGES_PER_S])

    started = time.perf_counter()
    run_training(cfg, report, None, device=device, work_dir=work_dir)
    wall = time.perf_counter() - started
    measured = [v for e, v in sorted(per_epoch.items()) if e >= 2] or list(per_epoch.values())
    return {"images_per_s": statistics.median(measured), "per_epoch": per_epoch, "run_wall_s": wall}


def _parser():
    from vlsm.model_registry import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=(*MODELS.names(), "all"), default="all")
    parser.add_argument("--quick", action="store_true",
                        help="smaller data set and one repeat (a smoke run, noisier)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--patients", type=int, default=None,
                        help="phantom patients (4 of them val/test; default 32, --quick 8)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per path, order alternating (default 3, --quick 1; median taken)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    return parser


def measure_rows(models: tuple[str, ...], sizes: dict[str, int], caches: dict[int, dict[str, Path]], args,
                 repeats: int, device: str, work_dir: Path) -> list[dict]:
    """Per model and encoder mode, a row per path (loader, on-device): median images/s of
    `repeats` runs, the paths' order alternating."""
    rows = []
    for model in models:
        for frozen in (True, False):
            runs: dict[str, list[dict]] = {name: [] for _, name in PATHS}
            for r in range(repeats):
                for on_device, name in PATHS if r % 2 == 0 else PATHS[::-1]:
                    runs[name].append(measure(model, frozen, on_device, caches[sizes[model]], args, device,
                                              work_dir))
            rows += [{"model": model, "encoder": "frozen" if frozen else "unfrozen", "path": name,
                      "data_on_device": on_device, "input_size": sizes[model],
                      "images_per_s": statistics.median(x["images_per_s"] for x in runs[name]),
                      "runs": runs[name]} for on_device, name in PATHS]
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    n_patients = args.patients or (8 if args.quick else 32)
    repeats = args.repeats or (1 if args.quick else 3)

    import torch

    from vlsm.data.cache import open_split
    from vlsm.model_registry import MODELS
    from vlsm.models import input_size, tiny_config

    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    models = MODELS.names() if args.model == "all" else (args.model,)
    sizes = {m: input_size(m, tiny_config(m)) for m in models}
    with tempfile.TemporaryDirectory(prefix="bench-train-throughput-") as tmp:
        started = time.perf_counter()
        caches = make_caches(Path(tmp), set(sizes.values()), n_patients)
        prep_s = time.perf_counter() - started
        rows = measure_rows(models, sizes, caches, args, repeats, device, Path(tmp))
        n_train = len(open_split(caches[next(iter(sizes.values()))]["train"]))
    ratios = [{"model": loader["model"], "encoder": loader["encoder"],
               "on_device_over_loader": on_dev["images_per_s"] / loader["images_per_s"]}
              for loader, on_dev in zip(rows[::2], rows[1::2], strict=True)]

    print(f"\ndevice {device}, torch {torch.__version__}, {args.threads} thread(s), batch "
          f"{args.batch_size}, {n_train} training items ({n_patients} phantom patients), "
          f"median over epochs 2-{args.epochs}, {repeats} run(s) per path, data prep {prep_s:.0f} s")
    print(f"{'model':<8} {'encoder':<9} {'path':<10} {'images/s':>9} {'on-device/loader':>17}")
    for i, row in enumerate(rows):
        ratio = f"{ratios[i // 2]['on_device_over_loader']:.2f}x" if row["data_on_device"] else ""
        print(f"{row['model']:<8} {row['encoder']:<9} {row['path']:<10} "
              f"{row['images_per_s']:>9.1f} {ratio:>17}")

    from bench.result_file import write_result

    write_result(args.out, {
        "benchmark": "train_throughput", "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
        "threads": args.threads, "batch_size": args.batch_size, "epochs": args.epochs, "repeats": repeats,
        "phantom_patients": n_patients, "train_items": n_train, "data_prep_s": prep_s,
        "rows": rows, "ratios": ratios,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
