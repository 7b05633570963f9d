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
    from sweeps.folder import FolderError, SweepFolder
    from vlsm.atomic import disk_full_line, not_writable

    log = logging.getLogger("sweeps")
    folder = SweepFolder(args.output_dir)
    try:
        problem = not_writable(folder.exports) if folder.holds_sweep() else None
        if problem:  # before any record is read
            log.error("cannot write the exports to %s: %s", folder.exports, problem)
            return 2
        log.info("wrote %s", export_sweep(args.output_dir))
    except (ValueError, FileNotFoundError, FolderError) as err:
        log.error("%s", err)
        return 2
    except OSError as err:
        line = disk_full_line(err, folder.exports)
        if line is None:
            raise
        log.error("%s", line)
        return 75  # as the sweep's driver: the same command, once there is space
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
