"""`vlsm export-synthetic-boost`: write raw CAMUS in the authors' PNG + JSON layout, as their
data module reads `data_root/camus` (docs/data.md); a refused --out exits with 2.

    python -m vlsm export-synthetic-boost --camus-root RAW --out DIR [--split-scheme paper|official]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--camus-root", type=Path, required=True,
                        help="raw CAMUS folder (2019 release: training/ testing/; 2023: database_nifti/)")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder to create (new, empty, or an earlier export with --overwrite); "
                        "never inside, equal to or holding --camus-root")
    parser.add_argument("--split-scheme", choices=("paper", "official"), default="paper",
                        help="paper: official test, first 50 other patients val, rest train; "
                        "official: the 2023 release's database_split files (default: paper)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out when it is an earlier export (it carries .vlsm-export.json and "
                        "holds only the files that lists); any other folder is refused")


def run(args: argparse.Namespace) -> int:
    from vlsm.data.synthetic_boost import export_synthetic_boost

    try:
        export_synthetic_boost(args.camus_root, args.out, args.split_scheme, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    return 0
