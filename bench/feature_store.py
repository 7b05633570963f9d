"""A frozen full-size CLIPSeg trial with and without the feature store, and the store's size.

    .venv/bin/python bench/feature_store.py [--threads 2] [--train-patients 4] [--epochs 2]

Part 1 runs `vlsm.train.run_training` both ways on a phantom cache at 352 px; part 2 sizes one
image's stored features per model and precision, scaled to the paper's datasets (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.*, run as a script

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "feature_store.json"
# Images per split (docs/design.md, "Data"): the paper's CAMUS split and SDM CAMUS.
DATASETS: dict[str, dict[str, int]] = {
    "CAMUS": {"train": 1600, "val": 200, "test": 200},
    "SDM CAMUS": {"train": 8000, "val": 1000},
}


def full_size_clipseg_config() -> dict:
    """`full_size.py`'s CLIPSeg with a full-size text tower over the tiny vocabulary (offline)."""
    from bench.full_size import full_size_config
    from vlsm.models.tokenizer import CLIP_CONTEXT_LENGTH, tiny_vocab_size

    vocab = tiny_vocab_size()
    text = {"vocab_size": vocab, "max_position_embeddings": CLIP_CONTEXT_LENGTH,
            "bos_token_id": vocab - 2, "eos_token_id": vocab - 1, "pad_token_id": vocab - 1}
    return {**full_size_config("clipseg"), "text_config": text}


def make_caches(root: Path, train_patients: int) -> dict[str, Path]:
    """Phantom CAMUS at 352 px: train_patients train, 1 val, 1 test patient (4 images each)."""
    from vlsm.data.cache import prepare_dataset
    from vlsm.data.phantom import write_demo_data

    demo = write_demo_data(root / "demo", seed=0, n_patients=train_patients + 2, n_test=1, n_val=1)
    return prepare_dataset("camus", demo.camus_root, 352, root / "cache", n_val=1, progress=False)


def measure_trial(caches: dict[str, Path], store: bool, epochs: int, work_dir: Path) -> dict:
    """One frozen trial; its images/s per epoch, wall seconds, and the store it built."""
    from vlsm.axes import IMAGES_PER_S
    from vlsm.config import TrainConfig
    from vlsm.train import run_training

    cfg = TrainConfig.from_dict({
        "model": "clipseg", "model_config": full_size_clipseg_config(), "freeze_encoder": True,
        "feature_store": store, "train_cache": str(caches["train"]), "val_cache": str(caches["val"]),
        "test_cache": None, "prompt": "P1", "batch_size": 8, "max_epochs": epochs, "min_epochs": 1,
        "precision": "fp32", "system_metrics_interval_s": 0,
    })
    started = time.perf_counter()
    result = run_training(cfg, lambda m, d: None, device="cpu", work_dir=work_dir)
    stores = sorted(Path(caches["train"]).parent.glob(f"{Path(caches['train']).name}.features-*"))
    meta = json.loads((stores[-1] / "meta.json").read_text()) if store and stores else None
    return {"feature_store": store, "images_per_s": [h[IMAGES_PER_S] for h in result.history],
            "wall_s": time.perf_counter() - started, "train_items": 3 * _n_images(caches["train"]),
            "store_nbytes": meta and meta["nbytes"], "store_images": meta and meta["n_images"]}


def _n_images(cache: Path) -> int:
    return int(json.loads((Path(cache) / "meta.json").read_text())["n_images"])


def feature_bytes() -> list[dict]:
    """Bytes of one image's stored features (`encode_image`), per model, `connect` mode
    (CRIS) and precision."""
    import torch

    from bench.full_size import full_size_config
    from vlsm.model_registry import MODELS
    from vlsm.models import build_model

    rows = []
    for name in MODELS.names():
        model = build_model(name, config=full_size_config(name), freeze_encoder=True).eval()
        for connect in (False, True) if hasattr(model, "connect_trains_when_frozen") else (False,):
            if connect:  # as with CLIP RN50 weights and no CRIS checkpoint
                model.connect_trains_when_frozen = True
                model.set_encoder_frozen(True)  # keeps eval mode
            pixels = torch.zeros(1, 3, model.input_size, model.input_size)
            for precision in ("fp32", "bf16"):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    features = model.encode_image(pixels)
                rows.append({"model": name, "connect_trains": connect, "precision": precision,
                             "input_size": model.input_size,
                             "shapes": [list(f.shape[1:]) for f in features],
                             "dtypes": [str(f.dtype).removeprefix("torch.") for f in features],
                             "bytes_per_image": sum(f.numel() * f.element_size() for f in features)})
        del model
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the figures: 2 cores)")
    parser.add_argument("--train-patients", type=int, default=4, help="4 images and 12 training items each")
    parser.add_argument("--epochs", type=int, default=2, help="the last one is measured")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-feature-store-") as tmp:
        caches = make_caches(Path(tmp), args.train_patients)
        trials = [measure_trial(caches, store, args.epochs, Path(tmp)) for store in (False, True)]
    off, on = trials
    ratio = on["images_per_s"][-1] / off["images_per_s"][-1]
    print(f"\nfrozen full-size CLIPSeg, 352 px, batch 8, fp32, CPU with {args.threads} threads, "
          f"{off['train_items']} training items; images/s of epoch {args.epochs}")
    print(f"{'feature store':<14} {'images/s':>9} {'per epoch':>30} {'trial wall s':>13}")
    for t in trials:
        per_epoch = " ".join(f"{v:.2f}" for v in t["images_per_s"])
        print(f"{str(t['feature_store']):<14} {t['images_per_s'][-1]:>9.2f} {per_epoch:>30} {t['wall_s']:>13.1f}")
    print(f"with / without: {ratio:.1f}x; the store's train split: {on['store_images']} images, "
          f"{on['store_nbytes'] / 1e6:.1f} MB (built at set-up, inside the trial's wall time)")

    sizes = feature_bytes()
    print("\nstored features per image and per dataset (GB), full size")
    header = f"{'model':<8} {'connect':>7} {'precision':>9} {'dtype':>9} {'MB/image':>9}"
    print(header + "".join(f" {d + ' ' + s:>17}" for d, splits in DATASETS.items() for s in splits))
    for r in sizes:
        line = (f"{r['model']:<8} {'trains' if r['connect_trains'] else '-':>7} {r['precision']:>9} "
                f"{'/'.join(sorted(set(r['dtypes']))):>9} {r['bytes_per_image'] / 1e6:>9.2f}")
        print(line + "".join(f" {n * r['bytes_per_image'] / 1e9:>17.2f}"
                             for splits in DATASETS.values() for n in splits.values()))

    from bench.result_file import write_result

    write_result(args.out, {"benchmark": "feature_store", "threads": args.threads, "trials": trials,
                            "ratio": ratio, "feature_bytes": sizes, "datasets": DATASETS})
    return 0


if __name__ == "__main__":
    sys.exit(main())
