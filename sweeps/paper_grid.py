"""The main job: the Synthetic Boost grid as one resumable Ray Tune experiment.

    python sweeps/paper_grid.py                                  # no data configured: the phantom demo
    python sweeps/paper_grid.py --camus-root CAMUS --sdm-root SDM --output runs/paper
    python sweeps/paper_grid.py --address auto --storage s3://bucket/sweeps --mlflow-uri http://head:5000   # on the head node
    python sweeps/paper_grid.py --dry-run                        # print the plan and a GPU-hour estimate

Reads search_spaces/paper.yaml (plus demo.yaml when no dataset is configured), expands
the grid (92 trials: synthetic data has no P7), chains each synth-PT:real-FT trial to its
synthetic upstream, runs everything under Ray Tune with MLflow tracking, and exports
Parquet files to <output>/exports. Running again with the same --output resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# One forced experiment snapshot per checkpoint is what keeping only the latest
# checkpoint costs (a few ms here); Ray warns about it at every trial otherwise.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# With a custom searcher Tune keeps a single trial pending; on an autoscaling cluster
# that brings GPU nodes up one at a time. Let the waiting trials show their demand.
os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "16")

from sweeps.grid import expand_grid  # noqa: E402
from sweeps.spec import SpecError, has_dataset, load_spec, models_without_weights  # noqa: E402

logger = logging.getLogger("paper_grid")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", help="Ray cluster to join from a cluster node: 'auto' or host:6379 (default: a local Ray)")
    parser.add_argument("--output", type=Path, help="sweep folder (default runs/<name>); the same folder resumes")
    parser.add_argument("--config", type=Path, help="a YAML file overlaid on search_spaces/paper.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a YAML value (dotted key), repeatable")
    parser.add_argument("--models", nargs="+", help="subset of the grid's models (CLIPSeg CRIS)")
    parser.add_argument("--prompts", nargs="+", help="subset of prompts (P0 ... P7)")
    parser.add_argument("--strategies", nargs="+", help="subset of strategies (real synthetic synth-PT:real-FT)")
    parser.add_argument("--encoders", nargs="+", help="subset of encoder modes (frozen unfrozen)")
    parser.add_argument("--camus-root", help="raw CAMUS folder (2019 or 2023 release)")
    parser.add_argument("--sdm-root", help="SDM CAMUS folder")
    parser.add_argument("--demo", action="store_true", help="run the phantom demo even if a dataset is configured")
    parser.add_argument("--cache-dir", type=Path, help="preprocessing caches and demo data (default <output>/cache)")
    parser.add_argument("--storage", help="Ray storage path for checkpoints: a shared folder or s3://... (default <output>/ray)")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default sqlite:///<output>/mlflow.db)")
    parser.add_argument("--lr-search", type=int, metavar="N", help="Optuna trials per (model, encoder) before the grid")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--cpu-only", action="store_true", help="request no GPUs even on a cluster that has (or can start) them")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--resume", action="store_true", help="continue the sweep in --output (also the default when it exists)")
    parser.add_argument("--skip-validation", action="store_true", help="do not run the data checks first")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    for axis in ("models", "prompts", "strategies", "encoders"):
        values = getattr(args, axis)
        if values:
            overrides.append(f"grid.{axis}=[{', '.join(repr(v) for v in values)}]")
    if args.camus_root:
        overrides.append(f"data.camus_root={args.camus_root!r}")
    if args.sdm_root:
        overrides.append(f"data.sdm_root={args.sdm_root!r}")
    if args.lr_search is not None:
        overrides.append(f"lr_search.trials={args.lr_search}")
    return overrides


def sweep_storage(storage: str | None, output: Path) -> str:
    """Where this sweep's Ray experiments live: <output>/ray, or a folder of its own under
    a shared --storage (named after the output folder, so sweeps sharing a bucket never
    restore each other's experiments)."""
    if not storage:
        return str(output / "ray")
    digest = hashlib.sha1(str(output).encode()).hexdigest()[:8]
    return f"{storage.rstrip('/')}/{output.name}-{digest}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec = load_spec(config=args.config, overrides=_overrides(args))
        if args.demo or not has_dataset(spec):
            if not args.demo:
                print("No dataset configured (--camus-root/--sdm-root or data: in the YAML): running the built-in phantom demo (search_spaces/demo.yaml).")
            spec = load_spec(config=args.config, demo=True, overrides=_overrides(args))
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    output = (args.output or Path("runs") / (f"{spec.name}-demo" if spec.data.demo else spec.name)).resolve()
    if output.exists() and (output / "chain_state.json").exists() and not args.resume and not args.dry_run:
        logger.info("%s holds a sweep: resuming it (finished trials are not rerun)", output)
    cache_dir = Path(args.cache_dir or spec.data.cache_dir or output / "cache").resolve()
    try:
        cells = expand_grid(spec)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from sweeps.data_setup import (
        DataError,
        check_data,
        prepare_caches,
        publish_caches,
        resolve_data,
    )
    from sweeps.plan import dataset_sizes, format_plan, measured_throughput

    if args.dry_run:
        roots_for_sizes = (None, None) if spec.data.demo else (
            Path(spec.data.camus_root) if spec.data.camus_root else None,
            Path(spec.data.sdm_root) if spec.data.sdm_root else None,
        )
        sizes = dataset_sizes(spec, *roots_for_sizes)
        print(format_plan(spec, cells, sizes, use_gpu=True, measured=measured_throughput(output)))
        return 0

    untrained = models_without_weights(spec)
    if untrained and not spec.data.demo:
        name = untrained[0]
        example = ("models.CRIS.checkpoint=/models/cris_r50.pth (official CRIS) or models.CRIS.pretrained=/models/RN50.pt"
                   if name == "CRIS" else f"models.{name}.pretrained=<hub id or folder>")
        print(f"error: models.{name}: no weights (pretrained, checkpoint and config are null), so the full-size "
              f"model would train from random initialisation; give --set {example}, leave it out with "
              f"--models, or set models.{name}.config (e.g. to {{}}) to train it from scratch on purpose", file=sys.stderr)
        return 2
    if args.address and args.address.startswith("ray://"):
        print("error: --address ray://...: the driver keeps the sweep state on its own disk, so it must run on "
              "the cluster; use `ray submit ray_cluster.yaml sweeps/paper_grid.py -- --address auto ...`", file=sys.stderr)
        return 2
    storage = sweep_storage(args.storage, output)
    if args.address and not args.storage:
        print("error: --address needs --storage: checkpoints must live where every node can read them "
              "(s3://bucket/prefix, or a folder all nodes share)", file=sys.stderr)
        return 2
    if args.resume and not (output / "chain_state.json").exists():
        print(f"error: --resume: {output} holds no sweep to resume (no chain_state.json)", file=sys.stderr)
        return 2
    output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        roots = resolve_data(spec, cache_dir)
        if not args.skip_validation:
            check_data(roots, spec.grid.strategies)
        caches = prepare_caches(spec, roots, cache_dir, tuple({c.strategy for c in cells}))
        if "://" in storage:  # trials on other nodes read the caches from shared storage
            caches = publish_caches(caches, storage)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    import ray

    from sweeps.export import export_sweep, resume_mismatch, write_sweep_file
    from sweeps.runner import record_not_run, run_grid
    from sweeps.trials import trial_config, trial_resources
    from vlsm.tracking import SweepTracker, default_tracking_uri

    # Trial output (checkpoint notices, ...) stays in each trial's folder unless --verbose;
    # the driver logs one line per finished trial.
    log_to_driver = args.verbose
    if args.address:
        ray.init(address=args.address, log_to_driver=log_to_driver)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=log_to_driver)
    # A cluster may start GPU nodes on demand (none yet at start); --cpu-only opts out.
    use_gpu = not args.cpu_only and (bool(args.address) or ray.cluster_resources().get("GPU", 0) > 0)
    tracker = SweepTracker(args.mlflow_uri or default_tracking_uri(output), spec.name, output)
    tracker.log_sweep_params({"spec": spec.to_dict()})

    lr = {}
    if spec.lr_search.trials > 0:
        from sweeps.lr_search import run_lr_search

        lr = run_lr_search(spec, caches, output=output, storage=storage, use_gpu=use_gpu)
        logger.info("learning rates from the search: %s", lr)
    configs = {cell.cell_id: trial_config(spec, cell, caches, lr=lr) for cell in cells}
    gpu_share = {c.cell_id: trial_resources(spec, c.model, c.encoder, use_gpu=use_gpu)["gpu"] for c in cells}
    mismatch = resume_mismatch(output, configs, storage)
    if mismatch:
        print(f"error: {output} holds a sweep started with other settings ({mismatch}); "
              "run it with its original options to resume, or give a new --output", file=sys.stderr)
        ray.shutdown()
        return 2
    write_sweep_file(output, storage=storage, mlflow_uri=tracker.tracking_uri, configs=configs, gpu_share=gpu_share)
    state = run_grid(spec, cells, configs, storage=storage, state_path=output / "chain_state.json", tracker=tracker, use_gpu=use_gpu)
    record_not_run(state, tracker, configs)
    exports = export_sweep(output, storage=storage)
    unfinished = [c for c, e in state.cells.items() if e.status in ("pending", "running")]
    if unfinished:  # Ctrl-C: Ray saved the experiment; the same command resumes it
        ray.shutdown()
        print(f"interrupted with {len(unfinished)} trial(s) unfinished; run the same command again to resume")
        return 130
    failed = [c for c, e in state.cells.items() if e.status != "done"]
    tracker.finish_sweep("FINISHED" if not failed else "FAILED")
    ray.shutdown()
    done = sum(e.status == "done" for e in state.cells.values())
    print(f"{done}/{len(state.cells)} trials done in {time.time() - started:.0f} s; exports: {exports}")
    for cell_id in failed:
        entry = state.cells[cell_id]
        print(f"  {cell_id}: {entry.status}: {entry.reason}")
    print(f"MLflow: mlflow ui --backend-store-uri {tracker.tracking_uri}")
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
