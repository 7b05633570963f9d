"""`vlsm prepare`: preprocess a dataset once into read-only caches, one per split and size;
prints ``<kind> <split> <size> <folder>`` per cache (docs/design.md, "The preprocessing cache").

    python -m vlsm prepare --camus-root data/CAMUS --size 352 --size 416 --cache-dir cache/
    python -m vlsm prepare --camus-root data/CAMUS --sdm-root data/SDM --cache-dir cache/
    python -m vlsm prepare --synthetic-root data/DiffEcho --synthetic-format diffecho --cache-dir cache/
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vlsm.atomic import disk_full_line, not_writable
from vlsm.axes import SOURCE_SDM
from vlsm.data.synthetic_sources import source_names

log = logging.getLogger(__name__)

# Input sizes of the two models (docs/design.md, "Models"): CLIPSeg 352, CRIS 416.
DEFAULT_SIZES: tuple[int, ...] = (352, 416)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--camus-root", type=Path, help="CAMUS folder (2019 or 2023 release)")
    parser.add_argument("--sdm-root", type=Path, help="SDM CAMUS folder of synthetic PNGs (with --camus-root, "
                        "its images get the CAMUS patients' metadata, needed for prompts P4-P6)")
    parser.add_argument("--synthetic-root", type=Path, help="folder of synthetic images in --synthetic-format")
    parser.add_argument("--synthetic-format", default=SOURCE_SDM, choices=source_names(),
                        help="layout of --synthetic-root (default sdm; --sdm-root DIR is --synthetic-root DIR "
                        "--synthetic-format sdm)")
    parser.add_argument("--synthetic-boost-root", type=Path, help="the Synthetic Boost authors' PNG + JSON layout")
    parser.add_argument("--size", type=int, action="append", metavar="PX", help="model input size in pixels; "
                        f"repeat for several (default: {' and '.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--cache-dir", type=Path, required=True, help="folder of the caches")
    parser.add_argument("--split-scheme", default="paper",
                        help="CAMUS split scheme: paper (default; the Synthetic Boost split) or official")
    parser.add_argument("--n-val", type=int, default=None, metavar="N",
                        help="paper scheme: number of validation patients (default: the paper's 50); also the "
                        "DiffEcho subjects and imagefolder patients (without a split column) that validate")
    parser.add_argument("--dataset", default="camus", choices=("camus", "sdm"),
                        help="which data set of the authors' layout (--synthetic-boost-root only)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes that decode and resize (default: up to 8 for large splits)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from vlsm.data.cache import prepare_dataset

    jobs = [(option, kind, root) for option, kind, root in (
        ("--camus-root", "camus", args.camus_root), ("--sdm-root", "sdm", args.sdm_root),
        ("--synthetic-root", args.synthetic_format, args.synthetic_root),
        ("--synthetic-boost-root", "synthetic-boost", args.synthetic_boost_root),
    ) if root is not None]
    if not jobs:
        log.error("give at least one of --camus-root, --sdm-root, --synthetic-root, --synthetic-boost-root")
        return 2
    for option, _, root in jobs:
        if not root.is_dir():
            log.error("%s %s: folder not found", option, root)
            return 2
    problem = not_writable(args.cache_dir)
    if problem:  # before any image is decoded
        log.error("--cache-dir %s: %s", args.cache_dir, problem)
        return 2
    sizes = args.size or list(DEFAULT_SIZES)
    bad = [s for s in sizes if s < 1]
    if bad:
        log.error("--size must be a positive number of pixels, got %s", bad)
        return 2
    for _, kind, root in jobs:
        for size in dict.fromkeys(sizes):  # unique, in the order given
            try:
                folders = prepare_dataset(kind, root, size, args.cache_dir, split_scheme=args.split_scheme,
                                          n_val=args.n_val, camus_root=args.camus_root if kind == "sdm" else None,
                                          dataset=args.dataset, progress=not args.no_progress, workers=args.workers)
            except (ValueError, FileNotFoundError) as err:
                log.error("%s", err)
                return 1
            except OSError as err:  # a full disk: nothing half-built stays; the same command resumes
                line = disk_full_line(err, args.cache_dir)
                if line is None:
                    raise
                log.error("%s", line)
                return 75
            for split, folder in folders.items():
                print(f"{kind} {split} {size} {folder}")
    return 0
