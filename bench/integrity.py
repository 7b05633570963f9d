"""What verifying caches and feature stores costs a trial's start (`vlsm.integrity`).

    .venv/bin/python bench/integrity.py [--images 1800] [--size 352] [--store-gb 1.0] [--quick]

Part 1 writes a cache folder of full CAMUS size (random pixels, the layout `_build` writes)
and times `open_split` without verification, hashing every file on every open
(VLSM_VERIFY=always) in one thread and in one thread per file, and a later open that
finds its stamp (VLSM_VERIFY=once, the default). Part 2 hashes a feature store of
--store-gb GB (3 float32 arrays) and scales its rate per CPU second to the paper's stores. The files are
in the page cache (just written): a first read from disk costs the disk's rate on top.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.result_file, run as a script

import numpy as np  # noqa: E402

from vlsm import integrity  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "integrity.json"
# The paper's training stores (docs/design.md, "Performance facts": 4.47 MB an image)
PAPER_STORES_GB = {"CAMUS train": 7.2, "SDM train": 36.0}


def write_cache(folder: Path, n: int, size: int) -> int:
    """A cache folder as `vlsm.data.cache._build` writes it (random values); its bytes."""
    from vlsm.axes import EVAL_SIZE
    from vlsm.data.cache import _CHECKED_FILES, CACHE_VERSION

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name, side in (("images", size), ("labels", size), ("eval_labels", EVAL_SIZE)):
        np.save(folder / f"{name}.npy", rng.integers(0, 256, (n, side, side), dtype=np.uint8))
    prompt = ["Left ventricular cavity of the heart.", "Left ventricular cavity in the cardiac ultrasound."]
    items = [{"image_index": i, "structure": s, "name": f"img{i}_{s}", "synthetic_prompts": None,
              "prompts": {f"p{k}": prompt for k in range(8)}} for i in range(n) for s in (1, 2, 3)]
    (folder / "items.json").write_text(json.dumps(items))
    meta = {"cache_version": CACHE_VERSION, "key": "0" * 64, "name": "bench", "split": "train", "size": size,
            "eval_size": EVAL_SIZE, "source": "camus2023", "n_images": n, "n_items": len(items),
            "names": [f"img{i}" for i in range(n)], "records": [{"synthetic": False}] * n,
            "files": integrity.manifest(folder, _CHECKED_FILES)}
    (folder / "meta.json").write_text(json.dumps(integrity.seal(meta)))
    return sum(p.stat().st_size for p in folder.iterdir())


@contextmanager
def verify_env(mode: str):
    old = os.environ.get(integrity.VERIFY_ENV)
    os.environ[integrity.VERIFY_ENV] = mode
    try:
        yield
    finally:
        os.environ.pop(integrity.VERIFY_ENV) if old is None else os.environ.__setitem__(integrity.VERIFY_ENV, old)


def best_of(repeats: int, run) -> dict:
    """Wall and CPU seconds (all threads) of the fastest of `repeats` calls: the least
    disturbed by other jobs (on a shared machine the CPU seconds are the steadier figure)."""
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        runs.append({"s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu})
    return min(runs, key=lambda r: r["s"])


def cache_rows(folder: Path, repeats: int) -> list[dict]:
    """open_split's seconds per verification path."""
    from vlsm.data.cache import _CHECKED_FILES, open_split

    rows = []
    with mock.patch.object(integrity, "verify_files", lambda *a, **k: None):
        rows.append({"path": "open, no verification (before)", **best_of(repeats, lambda: open_split(folder))})
    recorded = json.loads((folder / "meta.json").read_text())["files"]
    for workers in (1, len(_CHECKED_FILES)):
        run = lambda w=workers: integrity.verify_files(folder, recorded, "", mode="always", workers=w)  # noqa: E731
        rows.append({"path": f"hash every file, {workers} thread(s)", **best_of(repeats, run)})
    with verify_env("always"):
        rows.append({"path": "open, VLSM_VERIFY=always", **best_of(repeats, lambda: open_split(folder))})
    with verify_env("once"):
        open_split(folder)  # the first open on this node hashes and leaves the stamp
        rows.append({"path": "open, VLSM_VERIFY=once, stamp found", **best_of(repeats, lambda: open_split(folder))})
    return rows


def algorithm_rows(path: Path, repeats: int) -> list[dict]:
    """GB per wall and per CPU second of each candidate hash on one file, one thread."""
    gb, rows = path.stat().st_size / 1e9, []
    for name in ("sha256", "blake2b", "md5"):
        timed = best_of(repeats, lambda n=name: integrity.file_digest(path, n))
        rows.append({"algorithm": name, "gb_per_s": gb / timed["s"], "gb_per_cpu_s": gb / timed["cpu_s"]})
    return rows


def store_rows(folder: Path, store_gb: float, repeats: int) -> list[dict]:
    """Seconds to hash a store of 3 float32 arrays in 1 and 3 threads, scaled to the paper's stores."""
    folder.mkdir(parents=True)
    rows_per_file = max(1, int(store_gb * 1e9 / 3 / (485 * 768 * 4)))  # CLIPSeg: (1 + 22²) x 768 a layer
    rng = np.random.default_rng(1)
    for i in range(3):
        np.save(folder / f"image_{i}.npy", rng.standard_normal((rows_per_file, 485, 768), dtype=np.float32))
    names = [f"image_{i}.npy" for i in range(3)]
    gb = sum((folder / n).stat().st_size for n in names) / 1e9
    rows = []
    for workers in (1, 3):
        timed = best_of(repeats, lambda w=workers: integrity.manifest(folder, names, workers=w))
        rows.append({"threads": workers, "gb": gb, **timed, "gb_per_s": gb / timed["s"],
                     "gb_per_cpu_s": gb / timed["cpu_s"],
                     # at the CPU rate: what an idle core would take (this machine is shared)
                     "projected_s": {name: size / (gb / timed["cpu_s"]) for name, size in PAPER_STORES_GB.items()}})
    return rows


def print_tables(result: dict) -> None:
    print(f"\ncache of {result['images']} images at {result['size']} px: {result['cache_gb']:.2f} GB "
          "(page cache warm)")
    print(f"{'path':<40} {'wall s':>7} {'CPU s':>7}")
    for row in result["cache"]:
        print(f"{row['path']:<40} {row['s']:>7.3f} {row['cpu_s']:>7.3f}")
    print(f"\n{'algorithm':<10} {'GB/s':>6} {'GB/CPU s':>9}  (one thread)")
    for row in result["algorithms"]:
        print(f"{row['algorithm']:<10} {row['gb_per_s']:>6.2f} {row['gb_per_cpu_s']:>9.2f}")
    print(f"\nfeature store hashed (measured {result['store'][0]['gb']:.2f} GB; the paper's stores projected at "
          "the CPU rate)")
    print(f"{'threads':>7} {'GB/s':>6} {'GB/CPU s':>9} " + " ".join(f"{name + ' s':>14}" for name in PAPER_STORES_GB))
    for row in result["store"]:
        print(f"{row['threads']:>7} {row['gb_per_s']:>6.2f} {row['gb_per_cpu_s']:>9.2f} "
              + " ".join(f"{row['projected_s'][name]:>14.1f}" for name in PAPER_STORES_GB))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1800, help="images in the cache (full CAMUS: 1,800)")
    parser.add_argument("--size", type=int, default=352, help="input size in pixels (CLIPSeg 352)")
    parser.add_argument("--store-gb", type=float, default=1.0, help="feature store size to measure, GB")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row (the fastest is kept)")
    parser.add_argument("--quick", action="store_true", help="100 images, a 0.1 GB store, 1 repeat")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.store_gb, args.repeats = 100, 0.1, 1
    with tempfile.TemporaryDirectory(prefix="bench-integrity-") as tmp:
        cache = Path(tmp) / "cache" / "bench-train"
        result = {"images": args.images, "size": args.size, "cache_gb": write_cache(cache, args.images, args.size) / 1e9}
        result["cache"] = cache_rows(cache, args.repeats)
        result["algorithms"] = algorithm_rows(cache / "eval_labels.npy", args.repeats)
        result["store"] = store_rows(Path(tmp) / "store", args.store_gb, args.repeats)
    print_tables(result)
    from bench.result_file import write_result

    write_result(args.out, {"benchmark": "integrity", **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
