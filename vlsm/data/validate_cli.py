"""`vlsm validate-data`: check a CAMUS (and SDM) folder and report every problem.

    python -m vlsm validate-data --camus-root data/CAMUS --sdm-root data/SDM

Prints one line per problem (``path: message``; warnings as ``path: warning: message``)
and a summary line. Exit status 1 when there is any error, 0 otherwise (warnings
alone do not fail), 2 for bad arguments. Heavy imports happen in `run` only.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--camus-root", type=Path, help="CAMUS folder (2019 or 2023 release)")
    parser.add_argument("--sdm-root", type=Path, help="SDM CAMUS folder of synthetic PNGs")
    parser.add_argument("--split-scheme", default="paper", choices=("paper", "official"),
                        help="the CAMUS split to check (default paper, the Synthetic Boost split)")
    parser.add_argument("--n-val", type=int, default=None, metavar="N",
                        help="paper split: validation patients (default the paper's 50)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import sys

    from vlsm.data.validate import ERROR, validate_data

    if args.camus_root is None and args.sdm_root is None:
        print("validate-data: give --camus-root, --sdm-root or both", file=sys.stderr)
        return 2
    problems = validate_data(args.camus_root, args.sdm_root, split_scheme=args.split_scheme,
                             n_val=args.n_val, progress=not args.no_progress)
    for problem in problems:
        print(problem)
    n_errors = sum(p.severity == ERROR for p in problems)
    n_warnings = len(problems) - n_errors
    roots = " and ".join(str(r) for r in (args.camus_root, args.sdm_root) if r is not None)
    verdict = "FAILED" if n_errors else "OK"
    print(f"{verdict}: {n_errors} error(s), {n_warnings} warning(s) in {roots}")
    return 1 if n_errors else 0
