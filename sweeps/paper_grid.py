"""The main job: the Synthetic Boost grid as one resumable Ray Tune experiment.

    python sweeps/paper_grid.py                                  # no data configured: the phantom demo
    python sweeps/paper_grid.py --camus-root CAMUS --sdm-root SDM --output runs/paper
    python sweeps/paper_grid.py --address auto --storage s3://bucket/sweeps --mlflow-uri http://head:5000   # on the head node
    python sweeps/paper_grid.py --dry-run                        # print the plan and a GPU-hour estimate

Reads search_spaces/paper.yaml (plus demo.yaml when no dataset is configured), expands
the grid (92 trials: synthetic data has no P7), chains each synth-PT:real-FT trial to its
synthetic upstream, runs everything under Ray Tune with MLflow tracking, and exports
Parquet files to <output>/exports. Running again with the same --output resumes.

It runs in three phases (docs/design.md, "The driver"): plan (read the YAML and the
options and check them all; nothing runs), data (the dataset or the phantom demo,
validated, and the preprocessing caches), and the run, inside a session that always shuts
Ray down and closes the sweep's MLflow run (LR search, trial configs, resume check, the
grid, exports). Every error a user can cause is reported in one place, `main`: one line,
exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# One forced experiment snapshot per checkpoint is what keeping only the latest
# checkpoint costs (a few ms here); Ray warns about it at every trial otherwise.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# With a custom searcher Tune keeps a single trial pending; on an autoscaling cluster
# that brings GPU nodes up one at a time. Let the waiting trials show their demand.
os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "16")

from sweeps.cell import Cell  # noqa: E402  (after the path and environment set-up above)
from sweeps.data_setup import DataError, check_data, prepare_caches, publish_caches, resolve_data  # noqa: E402
from sweeps.folder import FolderBusy, SweepFolder, resume_mismatch  # noqa: E402
from sweeps.grid import expand_grid  # noqa: E402
from sweeps.outcome import DONE, FINISHED_STATUSES  # noqa: E402
from sweeps.plan import dataset_sizes, format_plan, measured_throughput  # noqa: E402
from sweeps.spec import (  # noqa: E402
    LRSearchSpace,
    SpecError,
    SweepSpec,
    load_spec,
    lr_search_space,
    models_without_weights,
)
from sweeps.trials import trial_config, trial_resources  # noqa: E402
from vlsm.atomic import not_writable  # noqa: E402

if TYPE_CHECKING:  # both import Ray, which planning and the dry run do without
    from sweeps.chain import ChainState
    from sweeps.tracking import SweepTracker

logger = logging.getLogger("paper_grid")

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


class UsageError(ValueError):
    """Options that cannot work (together, or with the sweep folder they name)."""


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


# --- phase 1: the plan ------------------------------------------------------------------


@dataclass(frozen=True)
class RaySettings:
    """How the driver joins Ray: a cluster's address, or a local Ray of num_cpus."""

    address: str | None
    num_cpus: int | None
    cpu_only: bool  # request no GPUs, even on a cluster that can start them
    log_to_driver: bool  # trial output on the driver's console (-v)


@dataclass(frozen=True)
class SweepPlan:
    """What the command line asks for, checked: everything the later phases read."""

    spec: SweepSpec
    cells: list[Cell]
    folder: SweepFolder
    cache_dir: Path
    storage: str  # where Ray keeps this sweep's experiments
    lr_space: LRSearchSpace | None  # the LR search's space, when it runs
    mlflow_uri: str
    validate: bool  # run the data checks first (not --skip-validation)
    ray: RaySettings


def _option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The options that stand for YAML values, as dotted keys with their values as typed
    (a path such as `--camus-root 2023` stays text; YAML would read a number)."""
    values: dict[str, Any] = {}
    for axis in ("models", "prompts", "strategies", "encoders"):
        if getattr(args, axis):
            values[f"grid.{axis}"] = list(getattr(args, axis))
    if args.camus_root:
        values["data.camus_root"] = args.camus_root
    if args.sdm_root:
        values["data.sdm_root"] = args.sdm_root
    if args.lr_search is not None:
        values["lr_search.trials"] = args.lr_search
    return values


def _load(args: argparse.Namespace) -> SweepSpec:
    """paper.yaml with the options; with demo.yaml when asked or when no dataset is set
    (decided first, so that `--set` values are checked against what will run)."""
    spec = load_spec(config=args.config, demo=True if args.demo else None, overrides=args.overrides,
                     values=_option_values(args))
    if spec.data.demo and not args.demo:
        print("No dataset configured (--camus-root/--sdm-root or data: in the YAML): running the built-in phantom demo (search_spaces/demo.yaml).")
    return spec


def _check_run_options(spec: SweepSpec, folder: SweepFolder, args: argparse.Namespace) -> None:
    """Refuse what cannot run, before anything does (a dry run only plans, so skips this)."""
    untrained = models_without_weights(spec)
    if untrained and not spec.data.demo:
        name = untrained[0]
        example = ("models.CRIS.checkpoint=/models/cris_r50.pth (official CRIS) or models.CRIS.pretrained=/models/RN50.pt"
                   if name == "CRIS" else f"models.{name}.pretrained=<hub id or folder>")
        raise UsageError(f"models.{name}: no weights (pretrained, checkpoint and config are null), so the full-size "
                         f"model would train from random initialisation; give --set {example}, leave it out with "
                         f"--models, or set models.{name}.config (e.g. to {{}}) to train it from scratch on purpose")
    if args.address and args.address.startswith("ray://"):
        raise UsageError("--address ray://...: the driver keeps the sweep state on its own disk, so it must run on "
                         "the cluster; use `ray submit ray_cluster.yaml sweeps/paper_grid.py -- --address auto ...`")
    if args.address and not args.storage:
        raise UsageError("--address needs --storage: checkpoints must live where every node can read them "
                         "(s3://bucket/prefix, or a folder all nodes share)")
    if args.resume and not folder.holds_sweep():
        raise UsageError(f"--resume: {folder.root} holds no sweep to resume (no {folder.chain_state.name})")
    if not args.address:  # a local Ray has the CPUs of this machine (or --num-cpus), no more
        cpus = args.num_cpus or os.cpu_count() or 1
        for model in spec.grid.models:
            for encoder in spec.grid.encoders:
                need = trial_resources(spec, model, encoder, use_gpu=False)["cpu"]
                if need > cpus:
                    raise UsageError(f"models.{model}.resources.{encoder}.cpu: {need:g} CPUs per trial, but the "
                                     f"local Ray has {cpus} (--num-cpus or this machine): no trial could start")
    fp16 = [f"models.{m}.train" if spec.models[m].train.get("precision") == "fp16" else "train"
            for m in spec.grid.models if {**spec.train, **spec.models[m].train}.get("precision") == "fp16"]
    if fp16 and not args.address and (args.cpu_only or not _local_gpu()):
        raise UsageError(_fp16_on_cpu(fp16[0]))


def _local_gpu() -> bool:
    import torch  # only asked when fp16 is configured

    return torch.cuda.is_available()


def _fp16_on_cpu(where: str) -> str:
    return (f"{where}.precision fp16: the trials would run on CPU (no GPU here, or --cpu-only), where fp16 "
            f"cannot train; use auto, bf16 or fp32")


def _check_places(plan: SweepPlan) -> None:
    """The folders a run writes and the MLflow store it logs to, usable (before anything runs)."""
    from sweeps.tracking import tracking_uri_problem

    for option, path in (("--output", plan.folder.root), ("--cache-dir", plan.cache_dir)):
        problem = not_writable(path)
        if problem:
            raise UsageError(f"{option} {path}: {problem}")
    if "://" not in plan.storage and not_writable(Path(plan.storage)):
        raise UsageError(f"--storage {plan.storage}: {not_writable(Path(plan.storage))}")
    problem = tracking_uri_problem(plan.mlflow_uri)
    if problem:
        raise UsageError(f"--mlflow-uri: {problem}")


def plan_sweep(args: argparse.Namespace) -> SweepPlan:
    """Phase 1: the spec, the grid and the folders, every option checked (SpecError,
    UsageError); nothing is written and nothing runs."""
    spec = _load(args)
    folder = SweepFolder(args.output or Path("runs") / (f"{spec.name}-demo" if spec.data.demo else spec.name))
    for key, option, root in (("camus_root", "--camus-root", spec.data.camus_root),
                              ("sdm_root", "--sdm-root", spec.data.sdm_root)):
        if root and not spec.data.demo and not Path(root).expanduser().is_dir():
            raise UsageError(f"{option} (data.{key}): {root} is not a folder; expected the dataset's root folder")
    try:
        cells = expand_grid(spec)
    except ValueError as err:  # a finetune mapped to a prompt synthetic data lacks
        raise SpecError(str(err)) from None
    if not args.dry_run:
        _check_run_options(spec, folder, args)
    plan = SweepPlan(
        spec=spec,
        cells=cells,
        folder=folder,
        cache_dir=Path(args.cache_dir or spec.data.cache_dir or folder.cache).resolve(),
        storage=folder.storage(args.storage),
        lr_space=lr_search_space(spec) if spec.lr_search.trials > 0 else None,
        mlflow_uri=args.mlflow_uri or folder.default_tracking_uri(),
        validate=not args.skip_validation,
        ray=RaySettings(args.address, args.num_cpus, args.cpu_only, args.verbose),
    )
    if not args.dry_run:
        _check_places(plan)
    return plan


def describe_plan(plan: SweepPlan) -> str:
    """The dry run: trials, dependencies, resources, a GPU-hour estimate."""
    data = plan.spec.data
    roots = (None, None) if data.demo else (
        Path(data.camus_root) if data.camus_root else None,
        Path(data.sdm_root) if data.sdm_root else None,
    )
    try:
        sizes = dataset_sizes(plan.spec, *roots)
    except ValueError as err:  # a dataset the grid cannot use (e.g. an empty split)
        raise DataError(str(err)) from None
    return format_plan(plan.spec, plan.cells, sizes, use_gpu=True, measured=measured_throughput(plan.folder.root))


# --- phase 2: the data -------------------------------------------------------------------


def prepare_data(plan: SweepPlan) -> dict[str, dict[str, dict[str, str]]]:
    """Phase 2: the dataset folders (or the phantom demo), checked, and the caches every
    trial reads by path (published to shared storage for a cluster). DataError."""
    try:
        roots = resolve_data(plan.spec, plan.cache_dir)
        if plan.validate:
            check_data(roots, plan.spec)
        caches = prepare_caches(plan.spec, roots, plan.cache_dir, tuple({c.strategy for c in plan.cells}))
        if "://" in plan.storage:  # trials on other nodes read the caches from shared storage
            caches = publish_caches(caches, plan.storage)
    except DataError:
        raise
    except ValueError as err:  # a reader naming a file it cannot use
        raise DataError(str(err)) from None
    return caches


# --- phase 3: the run ----------------------------------------------------------------------


def _use_the_nodes_token() -> None:
    """Token authentication on for this process when RAY_AUTH_MODE is unset and this node
    holds a Ray token (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH).

    Ray 2.60's `ray start --head` turns authentication on whenever such a token exists, but
    `ray.init` follows it only for address "auto" with RAY_ADDRESS unset: any other address
    connects with authentication off and is refused ("Authentication token is missing or
    incorrect"). This is Ray's own rule for "auto" (ray/_private/worker.py), applied to every
    address; it also refreshes Ray's cached config, which setting the variable would not.
    A token sent to a head without authentication is ignored, and an explicit
    RAY_AUTH_MODE is left as it is.
    """
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


@contextlib.contextmanager
def ray_session(settings: RaySettings) -> Iterator[bool]:
    """Ray for the sweep, shut down however the block ends; yields whether trials get GPUs."""
    import ray  # here, not at the top: planning and the dry run need no Ray

    # Trial output (checkpoint notices, ...) stays in each trial's folder unless --verbose;
    # the driver logs one line per finished trial.
    if settings.address:
        _use_the_nodes_token()
        ray.init(address=settings.address, log_to_driver=settings.log_to_driver)
    else:
        ray.init(num_cpus=settings.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=settings.log_to_driver)
    try:
        # A cluster may start GPU nodes on demand (none yet at start); --cpu-only opts out.
        yield not settings.cpu_only and (bool(settings.address) or ray.cluster_resources().get("GPU", 0) > 0)
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class SweepEnd:
    """How the grid ended: every cell's state, and where to look at the results."""

    state: ChainState
    exports: Path
    mlflow_uri: str

    def unfinished(self) -> list[str]:
        return [c for c, e in self.state.cells.items() if e.status not in FINISHED_STATUSES]

    def failed(self) -> list[str]:
        return [c for c, e in self.state.cells.items() if e.status in FINISHED_STATUSES and e.status != DONE]

    def mlflow_status(self) -> str:
        """The parent run's end: KILLED when interrupted (running again reopens it)."""
        return "KILLED" if self.unfinished() else "FAILED" if self.failed() else "FINISHED"


@contextlib.contextmanager
def mlflow_sweep(plan: SweepPlan) -> Iterator[SweepTracker]:
    """The sweep's MLflow parent run, closed however the block ends: with the status the
    block gave `finish_sweep`, else KILLED (Ctrl-C) or FAILED (an error)."""
    from sweeps.tracking import SweepTracker

    tracker = SweepTracker(plan.mlflow_uri, plan.spec.name, plan.folder.root)
    try:
        yield tracker
    except BaseException as err:
        tracker.finish_sweep("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    tracker.finish_sweep("FAILED")  # a no-op when the block finished the run itself


def run_sweep(plan: SweepPlan, caches: dict[str, dict[str, dict[str, str]]], use_gpu: bool) -> SweepEnd:
    """Phase 3 inside Ray: LR search, trial configs, resume check, the grid, exports."""
    from sweeps.export import export_sweep
    from sweeps.lr_search import run_lr_search
    from sweeps.runner import record_not_run, run_grid

    spec, folder = plan.spec, plan.folder
    lr: dict[tuple[str, str], float] = {}
    if plan.lr_space is not None:
        lr = run_lr_search(spec, plan.lr_space, caches, results_file=folder.lr_search, storage=plan.storage, use_gpu=use_gpu)
        logger.info("learning rates from the search: %s", lr)
    configs = {cell.cell_id: trial_config(spec, cell, caches, lr=lr) for cell in plan.cells}
    if not use_gpu and any(config["precision"] == "fp16" for config in configs.values()):
        raise UsageError(_fp16_on_cpu("train"))  # a cluster without GPUs (locally this was refused at once)
    mismatch = resume_mismatch(folder, configs, plan.storage)
    if mismatch:
        raise UsageError(f"{folder.root} holds a sweep started with other settings ({mismatch}); "
                         "run it with its original options to resume, or give a new --output")
    if folder.holds_sweep():
        logger.info("%s holds a sweep: resuming it (finished trials are not rerun)", folder.root)
    gpu_share = {c.cell_id: trial_resources(spec, c.model, c.encoder, use_gpu=use_gpu)["gpu"] for c in plan.cells}
    with mlflow_sweep(plan) as tracker:
        tracker.log_sweep_params({"spec": spec.to_dict()})
        folder.write_record(storage=plan.storage, mlflow_uri=tracker.tracking_uri, configs=configs, gpu_share=gpu_share)
        state = run_grid(spec, plan.cells, configs, storage=plan.storage, state_path=folder.chain_state,
                         tracker=tracker, use_gpu=use_gpu)
        record_not_run(state, tracker, configs)
        end = SweepEnd(state, export_sweep(folder.root, storage=plan.storage), tracker.tracking_uri)
        tracker.finish_sweep(end.mlflow_status())
    return end


def summarise(end: SweepEnd, seconds: float) -> int:
    """Print how the sweep ended; the exit status (0 all done, 1 some failed, 130 interrupted)."""
    unfinished = end.unfinished()
    if unfinished:  # Ctrl-C: Ray saved the experiment; the same command resumes it
        print(f"interrupted with {len(unfinished)} trial(s) unfinished; run the same command again to resume")
        return EXIT_INTERRUPTED
    cells = end.state.cells
    done = sum(e.status == DONE for e in cells.values())
    print(f"{done}/{len(cells)} trials done in {seconds:.0f} s; exports: {end.exports}")
    for cell_id in end.failed():
        print(f"  {cell_id}: {cells[cell_id].status}: {cells[cell_id].reason}")
    print(f"MLflow: mlflow ui --backend-store-uri {end.mlflow_uri}")
    return 0 if not end.failed() else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    try:
        plan = plan_sweep(args)
        if args.dry_run:
            print(describe_plan(plan))
            return 0
        with plan.folder.lock():  # one driver per sweep folder, for as long as it runs
            caches = prepare_data(plan)
            with ray_session(plan.ray) as use_gpu:
                end = run_sweep(plan, caches, use_gpu)
    except (SpecError, UsageError, DataError, FolderBusy) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return summarise(end, time.time() - started)


if __name__ == "__main__":
    raise SystemExit(main())
