"""The sweep side's command line (the main job is `python sweeps/paper_grid.py`):

    python -m sweeps export <output_dir>   (Parquet exports, also written at a sweep's end)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweeps", description="Tools for sweep folders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    export = sub.add_parser("export", help="write <output_dir>/exports/*.parquet from a sweep folder")
    export.add_argument("output_dir", type=Path, help="the --output folder of sweeps/paper_grid.py")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from sweeps.export import export_sweep
    from sweeps.folder import FolderError

    try:
        logging.getLogger("sweeps").info("wrote %s", export_sweep(args.output_dir))
    except (ValueError, FileNotFoundError, FolderError) as err:
        logging.getLogger("sweeps").error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
