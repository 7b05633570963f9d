"""`vlsm demo-data`: write the phantom dataset (docs/design.md, "The phantom") and say what
each split scheme makes of its patients.

    python -m vlsm demo-data --out demo_data --synthetic-format sdm --synthetic-format diffecho
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from vlsm.axes import SOURCE_SDM
from vlsm.data.synthetic_sources import source_names

if TYPE_CHECKING:
    from vlsm.data.phantom import DemoData

log = logging.getLogger(__name__)

# write_demo_data keyword -> option, for error messages
_OPTIONS: dict[str, str] = {
    "seed": "--seed", "n_patients": "--patients", "n_test": "--test-patients",
    "n_val": "--val-patients", "release": "--release", "sdm_per_image": "--sdm-per-image",
    "sdm_coding": "--sdm-coding", "size": "--size", "synthetic_formats": "--synthetic-format",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vlsm demo-data` (defaults as in `write_demo_data`)."""
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder to write (DIR/camus, DIR/sdm); created atomically")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    parser.add_argument("--patients", type=int, default=20, metavar="N", help="patients in all (default 20)")
    parser.add_argument("--test-patients", type=int, default=4, metavar="N",
                        help="the last N patients are the official test set (default 4)")
    parser.add_argument("--val-patients", type=int, default=4, metavar="N",
                        help="the first N non-test patients validate (default 4)")
    parser.add_argument("--release", choices=("2019", "2023"), default="2023",
                        help="CAMUS file layout (default 2023: NIfTI + split files)")
    parser.add_argument("--sdm-per-image", type=int, default=2, metavar="N",
                        help="synthetic SDM images per train/val image (default 2; the real SDM has 5)")
    parser.add_argument("--sdm-coding", choices=("labels", "sector"), default="labels",
                        help="SDM label-map coding (default labels: 1/2/3 = LV/MYO/LA)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 224), metavar=("H", "W"),
                        help="CAMUS image size (default 256 224); SDM images are H x H")
    parser.add_argument("--synthetic-format", action="append", choices=source_names(), metavar="FORMAT",
                        help="a synthetic format to write (DIR/FORMAT), as its tools write it; repeat "
                        f"for several: {', '.join(source_names())} (default sdm)")


def run(args: argparse.Namespace) -> int:
    """Write the dataset; ValueError (bad option values, a foreign --out) exits with 2."""
    from vlsm.data.phantom import write_demo_data

    try:
        data = write_demo_data(
            args.out, seed=args.seed, n_patients=args.patients, n_test=args.test_patients,
            n_val=args.val_patients, release=args.release, sdm_per_image=args.sdm_per_image,
            sdm_coding=args.sdm_coding, size=tuple(args.size),
            synthetic_formats=tuple(args.synthetic_format or (SOURCE_SDM,)))
    except ValueError as err:
        message = str(err)
        for name, option in _OPTIONS.items():  # name the command-line option, not the kwarg
            message = re.sub(rf"\b{name}=", f"{option} ", message)
        log.error("%s", message)
        return 2
    log.info("phantom dataset in %s: CAMUS %s at %s, seed %d", data.root, data.release, data.camus_root, data.seed)
    for fmt, root in data.synthetic_roots.items():
        coding = f", {data.sdm_coding} coding" if fmt == SOURCE_SDM else ""
        log.info("%s at %s (%d per train/val image%s)", fmt.upper() if fmt == SOURCE_SDM else fmt, root,
                 data.sdm_per_image, coding)
    log.info("%s", split_summary(data))
    return 0


def split_summary(data: DemoData) -> str:
    """What each split scheme makes of the dataset's patients, in the settings that choose it
    (the sweep's paper split validates on 50 by default, too many for a small phantom)."""
    from vlsm.data.camus import PAPER_VAL_PATIENTS

    n_test, n_val = len(data.test_patients), len(data.val_patients)
    others = len(data.train_patients) + n_val

    def counts(val: int) -> str:
        val = min(val, others)
        return f"{others - val} train / {val} val / {n_test} test"

    ours = counts(n_val)
    lines = [f"splits of its {data.n_patients} patients (the sweep's setting; validate-data's and prepare's option):"]
    if data.release == "2023":
        lines.append(f"  official, the release's split files (data.split_scheme=official; --split-scheme official): {ours}")
    lines.append(f"  paper with {n_val} validation patients (data.val_patients={n_val}; --n-val {n_val}): {ours}")
    empty = " (nothing to train on)" if others <= PAPER_VAL_PATIENTS else ""
    lines.append(f"  paper with the default {PAPER_VAL_PATIENTS} validation patients: {counts(PAPER_VAL_PATIENTS)}{empty}")
    return "\n".join(lines)
