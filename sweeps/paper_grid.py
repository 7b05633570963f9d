"""The main job: the Synthetic Boost grid as one resumable Ray Tune experiment.

    python sweeps/paper_grid.py                                  # no data configured: the phantom demo
    python sweeps/paper_grid.py --camus-root CAMUS --sdm-root SDM --output runs/paper
    python sweeps/paper_grid.py --address auto --storage s3://bucket/sweeps --mlflow-uri http://head:5000   # on the head node
    python sweeps/paper_grid.py --dry-run                        # print the plan and a GPU-hour estimate
    python sweeps/paper_grid.py --dry-run --rates bench/results/gpu_suite.json   # ... from measured rates

Reads search_spaces/paper.yaml (plus demo.yaml when no dataset is configured), runs the
grid (92 trials) under Ray Tune with MLflow tracking and exports Parquet files to
<output>/exports; the same --output resumes. Phases: docs/design.md, "The driver".
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Ray would warn at every trial about the snapshot forced per checkpoint (a few ms here).
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# With a custom searcher Tune keeps one trial pending: an autoscaler would add GPU nodes one by one.
os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "16")

from sweeps.data_setup import DataError, check_data, prepare_caches, publish_caches, resolve_data  # noqa: E402
from sweeps.folder import FolderError, recorded_experiments, resume_mismatch  # noqa: E402
from sweeps.options import SweepPlan, UsageError, describe_plan, fp16_on_cpu, plan_sweep  # noqa: E402
from sweeps.record import DONE, FINISHED_STATUSES, CellRecord, CellRecords  # noqa: E402
from sweeps.session import mlflow_sweep, ray_session  # noqa: E402
from sweeps.spec import SpecError  # noqa: E402
from sweeps.trials import trial_config, trial_resources  # noqa: E402
from vlsm.atomic import disk_full_line  # noqa: E402
from vlsm.data.synthetic_sources import source_names  # noqa: E402

logger = logging.getLogger("paper_grid")

EXIT_USAGE, EXIT_DISK_FULL, EXIT_INTERRUPTED = 2, 75, 130  # 75: EX_TEMPFAIL, the same command resumes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", help="Ray cluster to join from a cluster node: 'auto' or host:6379 (default: a local Ray)")
    parser.add_argument("--output", type=Path, help="sweep folder (default runs/<name>); the same folder resumes")
    parser.add_argument("--config", type=Path, help="a YAML file overlaid on search_spaces/paper.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a YAML value (dotted key), repeatable")
    parser.add_argument("--models", nargs="+", help="subset of the grid's models (CLIPSeg CRIS)")
    parser.add_argument("--prompts", nargs="+", help="subset of prompts (P0 ... P7)")
    parser.add_argument("--strategies", nargs="+", help="strategies (real synthetic synth-PT:real-FT; and real+synthetic)")
    parser.add_argument("--encoders", nargs="+", help="subset of encoder modes (frozen unfrozen)")
    parser.add_argument("--camus-root", help="raw CAMUS folder (2019 or 2023 release)")
    parser.add_argument("--sdm-root", help="SDM CAMUS folder (synthetic source sdm)")
    parser.add_argument("--synthetic-root", help="another synthetic dataset, in --synthetic-format")
    parser.add_argument("--synthetic-format", choices=source_names(),
                        help="the format (and source name) of --synthetic-root (default sdm)")
    parser.add_argument("--synthetic-sources", nargs="+", metavar="SOURCE",
                        help="the sources synthetic strategies train on, one set of cells each (default: every configured one)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="replicates: every cell once per seed (default 42)")
    parser.add_argument("--prompt-source", choices=("template", "generator"),
                        help="generator: synthetic images with their generator's text are prompted with it (default template)")
    parser.add_argument("--demo", action="store_true", help="run the phantom demo even if a dataset is configured")
    parser.add_argument("--cache-dir", type=Path, help="preprocessing caches and demo data (default <output>/cache)")
    parser.add_argument("--storage", help="Ray storage path for checkpoints: a shared folder or s3://... (default <output>/ray)")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default sqlite:///<output>/mlflow.db)")
    parser.add_argument("--lr-search", type=int, metavar="N", help="Optuna trials per (model, encoder) before the grid")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--cpu-only", action="store_true", help="request no GPUs even on a cluster that has (or can start) them")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--rates", type=Path, metavar="FILE|FOLDER",
                        help="measured training rates for the dry run's GPU-hours: bench/gpu_suite.py's JSON "
                             "or an earlier sweep folder (default: this sweep folder's exports, if any)")
    parser.add_argument("--resume", action="store_true", help="continue the sweep in --output (also the default when it exists)")
    parser.add_argument("--skip-validation", action="store_true", help="do not run the data checks first")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def prepare_data(plan: SweepPlan) -> dict[str, dict[str, dict[str, str]]]:
    """Phase 2: the dataset folders (or the demo's), checked, and the caches trials read by
    path (published to shared storage for a cluster). DataError."""
    try:
        roots = resolve_data(plan.spec, plan.cache_dir)
        if plan.validate:
            check_data(roots, plan.spec)
        caches = prepare_caches(plan.spec, roots, plan.cache_dir, plan.cells)
        if "://" in plan.storage:  # trials on other nodes read the caches from shared storage
            caches = publish_caches(caches, plan.storage)
    except DataError:
        raise
    except ValueError as err:  # a reader naming a file it cannot use
        raise DataError(str(err)) from None
    return caches


@dataclass(frozen=True)
class SweepEnd:
    """How the grid ended: every cell's record, and where the results are."""

    records: dict[str, CellRecord]
    exports: Path
    mlflow_uri: str
    experiment_id: str

    def mlflow_lines(self) -> list[str]:
        from sweeps.mlflow_ui import runs_url

        if self.mlflow_uri.startswith(("http://", "https://")):
            return [f"MLflow: {runs_url(self.mlflow_uri, self.experiment_id)}"]
        return [f"MLflow: mlflow ui --backend-store-uri {self.mlflow_uri} --port 5000",
                f"  then open {runs_url('http://127.0.0.1:5000', self.experiment_id)}"]

    def unfinished(self) -> list[str]:
        return [c for c, r in self.records.items() if r.status not in FINISHED_STATUSES]

    def failed(self) -> list[str]:
        return [c for c, r in self.records.items() if r.status in FINISHED_STATUSES and r.status != DONE]

    def mlflow_status(self) -> str:
        """The parent run's end: KILLED when interrupted (running again reopens it)."""
        return "KILLED" if self.unfinished() else "FAILED" if self.failed() else "FINISHED"


def _warn_unplaceable(plan: SweepPlan) -> None:
    """On a cluster: say at once when no node has the CPUs a trial asks for (it waits unless
    the autoscaler can start a larger node, which only its config knows)."""
    import ray

    from sweeps.options import too_many_cpus

    largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    for model, encoder, need in too_many_cpus(plan.spec, largest):
        logger.warning("models.%s.resources.%s.cpu: %g CPUs per trial, but no node of the cluster has "
                       "more than %g now: those trials wait until the autoscaler starts a larger node",
                       model, encoder, need, largest)


def run_sweep(plan: SweepPlan, caches: dict[str, dict[str, dict[str, str]]], use_gpu: bool) -> SweepEnd:
    """Phase 3 inside Ray: LR search, trial configs, resume check, the grid, exports."""
    from sweeps.export import export_sweep
    from sweeps.lr_search import run_lr_search
    from sweeps.runner import plan_experiments, record_not_run, run_grid

    spec, folder = plan.spec, plan.folder
    if plan.ray.address:
        _warn_unplaceable(plan)
    lr: dict[tuple[str, str], float] = {}
    if plan.lr_space is not None:
        lr = run_lr_search(spec, plan.lr_space, caches, results_file=folder.lr_search, storage=plan.storage, use_gpu=use_gpu)
        logger.info("learning rates from the search: %s", lr)
    configs = {cell.cell_id: trial_config(spec, cell, caches, lr=lr) for cell in plan.cells}
    if not use_gpu and any(config["precision"] == "fp16" for config in configs.values()):
        raise UsageError(fp16_on_cpu("train"))  # a cluster without GPUs (locally this was refused at once)
    mismatch = resume_mismatch(folder, configs, plan.storage)
    if mismatch:
        raise UsageError(f"{folder.root} holds a sweep started with other settings ({mismatch}); "
                         "run it with its original options to resume, or give a new --output")
    if folder.holds_sweep():
        logger.info("%s holds a sweep: resuming it (finished trials are not rerun)", folder.root)
    gpu_share = {c.cell_id: trial_resources(spec, c.model, c.encoder, use_gpu=use_gpu)["gpu"] for c in plan.cells}
    with mlflow_sweep(plan) as tracker:
        tracker.log_sweep_params({"spec": dataclasses.asdict(spec)})
        experiments = plan_experiments(recorded_experiments(folder), plan.cells)
        folder.write_record(storage=plan.storage, mlflow_uri=tracker.tracking_uri,
                            experiments={name: [c.cell_id for c in cells] for name, cells in experiments.items()})
        CellRecords(folder.cells).plan(experiments, configs, gpu_share)
        records = run_grid(spec, experiments, folder, storage=plan.storage, tracker=tracker, use_gpu=use_gpu)
        record_not_run(records, tracker)
        end = SweepEnd(records.cells, export_sweep(folder.root), tracker.tracking_uri, tracker.experiment_id)
        tracker.finish_sweep(end.mlflow_status())
    return end


def summarise(end: SweepEnd, seconds: float) -> int:
    """Print how the sweep ended; the exit status (0 all done, 1 some failed, 130 interrupted)."""
    unfinished = end.unfinished()
    if unfinished:  # Ctrl-C: the same command resumes (said last)
        sys.stderr.flush()
        print(f"interrupted with {len(unfinished)} trial(s) unfinished; run the same command again to resume",
              flush=True)
        return EXIT_INTERRUPTED
    records = end.records
    done = sum(r.status == DONE for r in records.values())
    print(f"{done}/{len(records)} trials done in {seconds:.0f} s; exports: {end.exports}")
    for cell_id in end.failed():
        print(f"  {cell_id}: {records[cell_id].status}: {records[cell_id].reason}")
    print("\n".join(end.mlflow_lines()))
    return 0 if not end.failed() else 1


def _disk_full_exit(err: Exception, plan: SweepPlan | None) -> int | None:
    """A full disk or quota anywhere (a trial's worker, a record, MLflow's SQLite, an
    export): one line saying which file and what to do, exit 75; None for other errors."""
    fallback: Path | str = plan.folder.root if plan is not None else Path.cwd()
    if plan is not None and plan.mlflow_uri.startswith("sqlite:///") and "disk is full" in str(err):
        fallback = plan.mlflow_uri[len("sqlite:///"):]  # SQLite names no file
    line = disk_full_line(err, fallback)
    if line is None:
        return None
    sys.stderr.flush()
    print(f"error: {line}", file=sys.stderr, flush=True)
    return EXIT_DISK_FULL


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started, plan = time.time(), None
    try:
        plan = dataclasses.replace(plan_sweep(args), command=shlex.join(["python", "sweeps/paper_grid.py", *argv]))
        if args.dry_run:
            print(describe_plan(plan))
            return 0
        plan.folder.holds_sweep()  # refuses a folder an older version wrote
        with plan.folder.lock():  # one driver per sweep folder, for as long as it runs
            caches = prepare_data(plan)
            with ray_session(plan.ray) as use_gpu:
                end = run_sweep(plan, caches, use_gpu)
    except (SpecError, UsageError, DataError, FolderError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        code = _disk_full_exit(err, plan)
        if code is None:
            raise
        return code
    return summarise(end, time.time() - started)


if __name__ == "__main__":
    raise SystemExit(main())
