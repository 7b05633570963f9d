"""The analysis command line (docs/analysis.md).

    python -m analysis report <output_dir> [--published [PATH]] [--format html|md] [--out FILE]
    python -m analysis example-export <dir> [--seeds N] [--sources sdm diffecho] [--mixed]
    python -m analysis notebooks [--out analysis/notebooks]

Each subcommand imports its heavy libraries itself, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description="Tables, tests, figures and reports of sweeps.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    report = sub.add_parser("report", help="write one self-contained report of a sweep")
    report.add_argument("output_dir", type=Path, help="the sweep's output folder (holding exports/*.parquet)")
    report.add_argument("--published", type=Path, nargs="?", const=True, default=None, metavar="PATH",
                        help="show ours beside the authors' per-image results: the copy bundled with the package, "
                             "or the authors' metrics folder PATH (naamiinepal/synthetic-boost metrics/)")
    report.add_argument("--format", choices=("html", "md"), default="html", help="report format (default html)")
    report.add_argument("--out", type=Path, default=None, help="report file (default <output_dir>/report.<format>)")
    report.add_argument("--test", choices=("wilcoxon", "ttest"), default="wilcoxon", help="paired test (default wilcoxon)")
    report.add_argument("--best-prompt", choices=("validation", "test"), default="validation",
                        help="what the claims choose a strategy's best prompt on (default validation; "
                             "test is the paper's choice)")
    report.add_argument("--n-boot", type=int, default=2000, metavar="N",
                        help="bootstrap resamples of every interval (default 2000)")

    example = sub.add_parser("example-export", help="write a small made-up export to try the report on")
    example.add_argument("output_dir", type=Path)
    example.add_argument("--seed", type=int, default=0, help="the generator's seed (default 0)")
    example.add_argument("--seeds", type=int, default=1, metavar="N",
                         help="training seeds per cell: 42, 43, ... (default 1)")
    example.add_argument("--sources", nargs="+", default=["sdm"], metavar="SOURCE",
                         help="synthetic sources of the synthetic cells (default sdm)")
    example.add_argument("--mixed", action="store_true", help="add real+synthetic cells, with and without provenance")

    notebooks = sub.add_parser("notebooks", help="regenerate the analysis notebooks (outputs stripped)")
    notebooks.add_argument("--out", type=Path, default=_HERE / "notebooks")
    return parser


def _unwritable_output(args: argparse.Namespace) -> str | None:
    """Why the folder the command writes cannot be written, refused before any work (the
    report checks its own --out, beside the sweep's exports)."""
    from vlsm.atomic import not_writable

    option, folder = {"example-export": ("output_dir", getattr(args, "output_dir", None)),
                      "notebooks": ("--out", getattr(args, "out", None))}.get(args.command, (None, None))
    problem = not_writable(folder) if folder is not None else None
    return None if problem is None else f"{option} {folder}: {problem}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("analysis")
    problem = _unwritable_output(args)
    if problem:
        log.error("%s", problem)
        return 2
    try:
        if args.command == "report":
            from analysis.report import build_report

            path = build_report(args.output_dir, published=args.published, fmt=args.format, out=args.out,
                                test=args.test, best_prompt=args.best_prompt, n_boot=args.n_boot)
            log.info("wrote %s", path)
        elif args.command == "example-export":
            from analysis.example import write_example_exports
            from vlsm.axes import STRATEGY_MIXED
            from vlsm.strategies import paper_strategies

            strategies = (*paper_strategies(), STRATEGY_MIXED) if args.mixed else paper_strategies()
            log.info("wrote %s", write_example_exports(args.output_dir, seed=args.seed, strategies=strategies,
                                                       sources=args.sources, seeds=range(42, 42 + args.seeds)))
        else:
            from analysis.notebook_builder import build_notebooks

            for path in build_notebooks(args.out):
                log.info("wrote %s", path)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    except OSError as err:  # e.g. a folder that became read-only half way
        log.error("cannot write %s: %s", err.filename, err.strerror)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
