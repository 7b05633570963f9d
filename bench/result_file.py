"""What every benchmark's JSON starts with (when, on what), and its atomic write:
`write_result(args.out, {"benchmark": "eval_encoding", "rows": rows})`."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """When and where a benchmark ran: time, interpreter, torch, platform, CPUs."""
    import torch

    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    """The result, after `machine()`'s fields, as indented JSON written atomically."""
    from vlsm.atomic import write_text_atomic

    write_text_atomic(path, json.dumps({**machine(), **result}, indent=2) + "\n")
    print(f"wrote {path}")
