"""Phase 1 of the main job: the options of `sweeps/paper_grid.py` made into a SweepPlan,
every option and combination checked before anything is written or started (SpecError or
UsageError naming the option; docs/design.md, "The driver")."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.cell import Cell
from sweeps.data_setup import DataError, source_prompts
from sweeps.folder import SweepFolder
from sweeps.grid import plan_grid
from sweeps.plan import dataset_sizes, format_plan
from sweeps.rates import load_rates
from sweeps.spec import (
    LRSearchSpace,
    SpecError,
    SweepSpec,
    grid_sources,
    load_spec,
    lr_search_space,
    models_without_weights,
    synthetic_roots,
)
from sweeps.trials import trial_resources
from vlsm.atomic import not_writable

__all__ = ["RaySettings", "SweepPlan", "UsageError", "describe_plan", "fp16_on_cpu", "plan_sweep", "too_many_cpus"]


class UsageError(ValueError):
    """Options that cannot work (together, or with the sweep folder they name)."""


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
    rates: Path | None = None  # --rates: measured training rates for the dry run's estimate
    command: str = ""  # the command line that made the sweep (MLflow's description)
    skipped: dict[str, str] = field(default_factory=dict)  # cell_id -> why the grid cannot run it


_OPTION_KEYS = {  # option -> the YAML key it sets
    **{axis: f"grid.{axis}" for axis in ("models", "prompts", "strategies", "encoders", "synthetic_sources", "seeds")},
    **{root: f"data.{root}" for root in ("camus_root", "sdm_root", "synthetic_root", "synthetic_format")},
    "prompt_source": "train.prompt_source",
}


def _option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The options that stand for YAML values, as dotted keys with their values as typed
    (a path such as `--camus-root 2023` stays text; YAML would read a number)."""
    values = {key: getattr(args, option) for option, key in _OPTION_KEYS.items() if getattr(args, option, None)}
    if args.lr_search is not None:
        values["lr_search.trials"] = args.lr_search
    return values


def _load(args: argparse.Namespace) -> SweepSpec:
    """paper.yaml with the options, and demo.yaml when asked or when no dataset is set."""
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
    if args.address:
        problem = _cluster_problem(args.address)
        if problem:
            raise UsageError(problem)
    if args.address and not args.storage:
        raise UsageError("--address needs --storage: checkpoints must live where every node can read them "
                         "(s3://bucket/prefix, or a folder all nodes share); without --address the sweep "
                         "runs on a local Ray and needs neither")
    if args.resume and not folder.holds_sweep():
        raise UsageError(f"--resume: {folder.root} holds no sweep to resume (no {folder.cells.name}/)")
    cpus = args.num_cpus or os.cpu_count() or 1  # a local Ray's: this machine's or --num-cpus
    over = [] if args.address else too_many_cpus(spec, cpus)
    if over:
        model, encoder, need = over[0]
        raise UsageError(f"models.{model}.resources.{encoder}.cpu: {need:g} CPUs per trial, but the "
                         f"local Ray has {cpus} (--num-cpus or this machine): no trial could start")
    fp16 = [f"models.{m}.train" if spec.models[m].train.get("precision") == "fp16" else "train"
            for m in spec.grid.models if {**spec.train, **spec.models[m].train}.get("precision") == "fp16"]
    if fp16 and not args.address:
        import torch  # only asked when fp16 is configured

        if args.cpu_only or not torch.cuda.is_available():
            raise UsageError(fp16_on_cpu(fp16[0]))


def too_many_cpus(spec: SweepSpec, cpus: float) -> list[tuple[str, str, float]]:
    """(model, encoder, CPUs per trial) of the trials that ask for more than `cpus`."""
    needs = [(m, e, trial_resources(spec, m, e, use_gpu=False)["cpu"])
             for m in spec.grid.models for e in spec.grid.encoders]
    return [need for need in needs if need[2] > cpus]


_NO_CLUSTER_ADVICE = ("start one with `ray start --head` on this machine or `ray up ray_cluster.yaml` on AWS "
                      "(then run the driver on its head: `ray submit ray_cluster.yaml sweeps/paper_grid.py -- "
                      "--address auto ...`), or leave out --address to run on a local Ray")


def _cluster_problem(address: str) -> str | None:
    """Why no Ray cluster can be joined at `address` ("auto": RAY_ADDRESS, else this node's),
    in one line, or None (ray.init would fail only after the caches, with a traceback)."""
    import socket

    from ray._private.services import get_ray_address_from_environment

    found = address
    if address == "auto":
        try:
            found = get_ray_address_from_environment("auto", None)
        except ConnectionError:
            return f"--address auto: no Ray cluster found on this node; {_NO_CLUSTER_ADVICE}"
    host, _, port = found.rpartition(":")
    if "://" in found or not port.isdigit():
        return None  # an address form for Ray itself to judge
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        return f"--address {address}: no Ray cluster answers at {found} ({err.strerror or err}); {_NO_CLUSTER_ADVICE}"
    return None


def fp16_on_cpu(where: str) -> str:
    return (f"{where}.precision fp16: the trials would run on CPU (no GPU here, or --cpu-only), where fp16 "
            f"cannot train; use auto, bf16 or fp32")


def _check_places(plan: SweepPlan) -> None:
    """The folders a run writes and the MLflow store it logs to, usable."""
    from sweeps.tracking import tracking_uri_problem

    for option, path in (("--output", plan.folder.root), ("--cache-dir", plan.cache_dir)):
        problem = not_writable(path)
        if problem:
            raise UsageError(f"{option} {path}: {problem}")
    local_storage = plan.storage.removeprefix("file://")  # a shared file:// folder is a local path here
    if "://" not in local_storage and not_writable(Path(local_storage)):
        raise UsageError(f"--storage {plan.storage}: {not_writable(Path(local_storage))}")
    problem = tracking_uri_problem(plan.mlflow_uri)
    if problem:
        raise UsageError(f"--mlflow-uri: {problem}")


def _check_prompt_source(spec: SweepSpec) -> None:
    """--prompt-source generator needs a source whose images carry their generator's text."""
    if spec.train.get("prompt_source") != "generator":
        return
    from vlsm.data.synthetic_sources import has_generator_text

    roots = synthetic_roots(spec)
    with_text = [s for s in grid_sources(spec) if (spec.data.demo or s in roots)  # the demo: the phantom's
                 and has_generator_text(s, None if spec.data.demo else Path(roots[s]))]
    if not with_text:
        raise UsageError(f"--prompt-source generator (train.prompt_source): none of the grid's synthetic sources "
                         f"{list(grid_sources(spec))} carries its generator's text (SDM has none); use diffecho or "
                         f"an imagefolder with a text column")


def plan_sweep(args: argparse.Namespace) -> SweepPlan:
    """Phase 1: the spec, the grid and the folders, every option checked; nothing runs."""
    spec = _load(args)
    folder = SweepFolder(args.output or Path("runs") / (f"{spec.name}-demo" if spec.data.demo else spec.name))
    for key, option, root in (("camus_root", "--camus-root", spec.data.camus_root),
                              ("sdm_root", "--sdm-root", spec.data.sdm_root),
                              ("synthetic_root", "--synthetic-root", spec.data.synthetic_root)):
        if root and not spec.data.demo and not Path(root).expanduser().is_dir():
            raise UsageError(f"{option} (data.{key}): {root} is not a folder; expected the dataset's root folder")
    try:
        prompts = source_prompts(spec)  # what each synthetic source's metadata can build
        cells, skipped = plan_grid(spec, prompts)
    except ValueError as err:  # a finetune mapped to a prompt synthetic data lacks, unreadable metadata
        raise SpecError(str(err)) from None
    if not cells:
        raise SpecError(f"the grid has no trial that can run: {next(iter(skipped.values()), 'no cells')}")
    _check_prompt_source(spec)
    if not args.dry_run:
        _check_run_options(spec, folder, args)
    if args.rates is not None and not args.dry_run:
        raise UsageError("--rates: only with --dry-run (it feeds the dry run's GPU-hour estimate)")
    if args.rates is not None and not args.rates.expanduser().exists():
        raise UsageError(f"--rates {args.rates}: no such file or folder; expected bench/gpu_suite.py's "
                         f"JSON or a sweep folder with exports/")
    plan = SweepPlan(
        spec=spec, cells=cells, folder=folder, storage=folder.storage(args.storage),
        cache_dir=Path(args.cache_dir or spec.data.cache_dir or folder.cache).resolve(),
        lr_space=lr_search_space(spec) if spec.lr_search.trials > 0 else None,
        mlflow_uri=args.mlflow_uri or folder.default_tracking_uri(), validate=not args.skip_validation,
        ray=RaySettings(args.address, args.num_cpus, args.cpu_only, args.verbose), rates=args.rates, skipped=skipped)
    if not args.dry_run:
        _check_places(plan)
    return plan


def describe_plan(plan: SweepPlan) -> str:
    """The dry run: trials, dependencies, resources, a GPU-hour estimate."""
    data = plan.spec.data
    camus = Path(data.camus_root).expanduser() if data.camus_root and not data.demo else None
    synthetic = {} if data.demo else {s: Path(r).expanduser() for s, r in synthetic_roots(plan.spec).items()}
    try:
        sizes = dataset_sizes(plan.spec, camus, synthetic)
    except ValueError as err:  # a dataset the grid cannot use (e.g. an empty split)
        raise DataError(str(err)) from None
    try:
        rates = load_rates(plan.rates, plan.folder.root, plan.spec.train.get("feature_store") is not False)
    except ValueError as err:  # --rates names a file or folder it cannot use
        raise UsageError(str(err)) from None
    return format_plan(plan.spec, plan.cells, sizes, use_gpu=True, rates=rates, skipped=plan.skipped)
