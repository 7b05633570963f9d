"""The `vlsm` command (also `python -m vlsm`): one subcommand per job.

    python -m vlsm --help

Each subcommand's module defines `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo-data": ("vlsm.data.phantom_cli", "write a phantom CAMUS + SDM dataset for the demo and tests"),
    "prepare": ("vlsm.data.cache_cli", "preprocess a dataset split once into a read-only cache"),
    "validate-data": ("vlsm.data.validate_cli", "check a CAMUS (and a synthetic) folder and report every problem"),
    "export-synthetic-boost": (
        "vlsm.data.synthetic_boost_cli",
        "write raw CAMUS in the Synthetic Boost authors' PNG + JSON layout",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlsm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
