"""Evaluation work per image: one forward per structure vs the image encoded once.

    .venv/bin/python bench/eval_encoding.py [--models clipseg cris]

FLOPs of one image with its three prompts at full size through both paths of
`vlsm.evaluate` (`TrainConfig.shared_image_eval`), and whether their logits agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.full_size, run as a script

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "eval_encoding.json"
PROMPTS = ("Left ventricular cavity of the heart.", "Myocardium of the heart.", "Left atrium cavity of the heart.")


def measure(model_name: str) -> dict:
    """GFLOPs of both paths on one image and three prompts, and how far their logits differ."""
    import torch

    from bench.flops import flop_counter
    from bench.full_size import build_full_size
    from vlsm.models.tokenizer import CLIP_CONTEXT_LENGTH, tiny_tokenizer
    from vlsm.trial_data import ModelInputs

    model = build_full_size(model_name, frozen=False).eval()
    tokens = tiny_tokenizer(CLIP_CONTEXT_LENGTH)(list(PROMPTS))  # (3, 77): CLIP's length; the ids' values do not count
    inputs = ModelInputs(model, SimpleNamespace(**tokens), torch.device("cpu"), "fp32")
    s = model.input_size
    images = torch.randint(0, 256, (1, s, s), dtype=torch.uint8).expand(3, s, s)  # one image, 3 rows
    rows, image_index = torch.arange(3), torch.zeros(3, dtype=torch.long)
    out = {"model": model_name, "input_size": s}
    logits = {}
    with torch.no_grad():
        for name, shared in (("per_structure", False), ("image_once", True)):
            counter = flop_counter()
            started = time.perf_counter()
            with counter:
                logits[name] = inputs(model, images, rows, image_index, shared=shared)
            out[f"{name}_gflop"] = counter.get_total_flops() / 1e9
            out[f"{name}_s"] = time.perf_counter() - started
    out["saved"] = 1 - out["image_once_gflop"] / out["per_structure_gflop"]
    out["max_abs_diff"] = float((logits["image_once"] - logits["per_structure"]).abs().max())
    out["bit_identical"] = bool(torch.equal(logits["image_once"], logits["per_structure"]))
    return out


def main(argv: list[str] | None = None) -> int:
    from vlsm.model_registry import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS.names(), default=list(MODELS.names()))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args(argv)

    rows = [measure(m) for m in args.models]
    print("\none image, three structure prompts, full size, random weights (CPU, fp32)")
    print(f"{'model':<8} {'px':>4} {'per structure GFLOP':>20} {'image once GFLOP':>17} {'saved':>6} "
          f"{'max |diff|':>10} {'identical':>9}")
    for r in rows:
        print(f"{r['model']:<8} {r['input_size']:>4} {r['per_structure_gflop']:>20.1f} "
              f"{r['image_once_gflop']:>17.1f} {r['saved']:>6.0%} {r['max_abs_diff']:>10.2e} "
              f"{str(r['bit_identical']):>9}")

    from bench.result_file import write_result

    write_result(args.out, {"benchmark": "eval_encoding", "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
