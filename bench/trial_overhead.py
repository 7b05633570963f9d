"""Ray Tune per-trial overhead: reuse_actors=True (the sweeps' setting) vs False, in one run.

    .venv/bin/python bench/trial_overhead.py [--trials 20] [--out bench/results/trial_overhead.json]

N trivial trials on a local Ray with 2 CPUs, after an untimed warm-up (bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.*, run as a script

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "trial_overhead.json"
NUM_CPUS = 2


def trivial(config: dict) -> None:
    """The trial: one report, nothing else."""
    from ray import tune

    tune.report({"x": 1})


def run_experiment(trials: int, reuse_actors: bool, storage: str, name: str) -> float:
    """Wall seconds of Tuner.fit() for `trials` trivial trials."""
    from ray import tune

    tuner = tune.Tuner(
        trivial,
        tune_config=tune.TuneConfig(num_samples=trials, reuse_actors=reuse_actors),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
    )
    started = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - started
    if results.num_errors or len(results) != trials:
        raise RuntimeError(f"{name}: {len(results)} results, {results.num_errors} errors (expected {trials}, 0)")
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per mode (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up trials (default 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args(argv)

    import ray

    started = time.perf_counter()
    ray.init(num_cpus=NUM_CPUS, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING", log_to_driver=False)
    init_s = time.perf_counter() - started
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-trial-overhead-") as storage:
            if args.warmup:
                run_experiment(args.warmup, True, storage, "warmup")
            for reuse in (True, False):
                wall = run_experiment(args.trials, reuse, storage, f"reuse_{reuse}".lower())
                rows.append({"mode": f"reuse_actors={reuse}", "reuse_actors": reuse, "trials": args.trials,
                             "wall_s": wall, "s_per_trial": wall / args.trials,
                             "s_per_slot": wall * NUM_CPUS / args.trials})  # NUM_CPUS trials at a time
    finally:
        ray.shutdown()

    ratio = rows[1]["wall_s"] / rows[0]["wall_s"]
    print(f"\nRay {ray.__version__}, {NUM_CPUS} CPUs (1 per trial), ray.init {init_s:.1f} s, "
          f"os.cpu_count() {os.cpu_count()}")
    print(f"{'mode':<20} {'trials':>6} {'wall s':>8} {'s/trial':>8} {'s/slot':>8}")
    for r in rows:
        print(f"{r['mode']:<20} {r['trials']:>6} {r['wall_s']:>8.1f} {r['s_per_trial']:>8.2f} "
              f"{r['s_per_slot']:>8.2f}")
    print(f"reuse_actors=False / True: {ratio:.1f}x the wall time")

    from bench.result_file import write_result

    write_result(args.out, {"benchmark": "trial_overhead", "ray": ray.__version__, "ray_cpus": NUM_CPUS,
                            "ray_init_s": init_s, "warmup_trials": args.warmup, "rows": rows,
                            "ratio_no_reuse_over_reuse": ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main())
