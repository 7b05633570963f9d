"""`vlsm validate-data`: check a CAMUS (and a synthetic) folder and print every problem,
the label codings of each synthetic root and a summary; exit 1 on any error, 2 for bad
arguments (docs/design.md, "Checking a dataset").

    python -m vlsm validate-data --camus-root data/CAMUS --sdm-root data/SDM
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlsm.axes import SOURCE_SDM
from vlsm.data.synthetic_sources import source_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--camus-root", type=Path, help="CAMUS folder (2019 or 2023 release)")
    parser.add_argument("--sdm-root", type=Path,
                        help="SDM CAMUS folder of synthetic PNGs (= --synthetic-root DIR --synthetic-format sdm)")
    parser.add_argument("--synthetic-root", type=Path, help="folder of synthetic images in --synthetic-format")
    parser.add_argument("--synthetic-format", default=SOURCE_SDM, choices=source_names(),
                        help="layout of --synthetic-root (default sdm)")
    parser.add_argument("--split-scheme", default="paper", choices=("paper", "official"),
                        help="the CAMUS split to check (default paper, the Synthetic Boost split)")
    parser.add_argument("--n-val", type=int, default=None, metavar="N",
                        help="paper split: validation patients (default the paper's 50); also the "
                        "DiffEcho subjects and imagefolder patients (without a split column) that validate")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import sys

    from vlsm.data.label_codings import CODING_DESCRIPTIONS
    from vlsm.data.problems import ERROR, WARNING
    from vlsm.data.validate import validate_data

    roots = [r for r in (args.camus_root, args.sdm_root, args.synthetic_root) if r is not None]
    if not roots:
        print("validate-data: give --camus-root, --sdm-root (or --synthetic-root) or both", file=sys.stderr)
        return 2
    findings = validate_data(args.camus_root, args.sdm_root, synthetic_root=args.synthetic_root,
                             synthetic_format=args.synthetic_format, split_scheme=args.split_scheme,
                             n_val=args.n_val, progress=not args.no_progress)
    for problem in findings:
        print(problem)
    for root, counts in findings.codings.items():
        if counts:
            found = ", ".join(f"{coding} ({CODING_DESCRIPTIONS.get(coding, coding)}) in {n} mask(s)"
                              for coding, n in sorted(counts.items()))
            print(f"{root}: label codings: {found}")
    n_errors = sum(p.severity == ERROR for p in findings)
    n_warnings = sum(p.severity == WARNING for p in findings)
    verdict = "FAILED" if n_errors else "OK"
    print(f"{verdict}: {n_errors} error(s), {n_warnings} warning(s) in {' and '.join(map(str, roots))}")
    return 1 if n_errors else 0
