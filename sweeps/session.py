"""The run's contexts: Ray, and the sweep's MLflow parent run, each closed however the run
ends (a finished grid, an error, Ctrl-C)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sweeps.options import RaySettings, SweepPlan, UsageError
from vlsm.atomic import disk_full

if TYPE_CHECKING:  # imports MLflow and Ray, which planning does without
    from sweeps.tracking import SweepTracker

__all__ = ["mlflow_sweep", "ray_session"]

logger = logging.getLogger(__name__)


def _use_the_nodes_token() -> None:
    """Token authentication on when RAY_AUTH_MODE is unset and this node holds a Ray token:
    Ray 2.60's `ray.init` does so only for "auto" without RAY_ADDRESS, so any other address
    would be refused (docs/cluster.md). Ray's own rule, which also refreshes its cached config."""
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

    if settings.address:  # trial output stays in each trial's folder unless --verbose
        _use_the_nodes_token()
        try:
            ray.init(address=settings.address, log_to_driver=settings.log_to_driver)
        except ConnectionError as err:  # the head went away after planning found it
            raise UsageError(f"--address {settings.address}: cannot join the Ray cluster ({err})") from None
    else:
        ray.init(num_cpus=settings.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=settings.log_to_driver)
    try:
        # A cluster may start GPU nodes on demand (none yet at start); --cpu-only opts out.
        yield not settings.cpu_only and (bool(settings.address) or ray.cluster_resources().get("GPU", 0) > 0)
    finally:
        ray.shutdown()


@contextlib.contextmanager
def mlflow_sweep(plan: SweepPlan) -> Iterator[SweepTracker]:
    """The sweep's MLflow parent run, closed however the block ends: with the status the
    block gave `finish_sweep`, else KILLED (Ctrl-C, a full disk: the same command resumes)
    or FAILED (an error). Closing it may fail too (its store on the full disk): the error
    that ended the block is the one raised."""
    from sweeps.tracking import SweepTracker

    tracker = SweepTracker(plan.mlflow_uri, plan.spec.name, plan.folder.root, command=plan.command)
    try:
        yield tracker
    except BaseException as err:
        resumable = isinstance(err, KeyboardInterrupt) or disk_full(err) is not None
        try:
            tracker.finish_sweep("KILLED" if resumable else "FAILED")
        except Exception as closing:  # noqa: BLE001 - any MLflow error; the block's error goes on
            why = "its store is full too" if disk_full(closing) else str(closing).splitlines()[0]
            logger.warning("MLflow: cannot close the sweep's run (%s); the next run of this sweep does", why)
        raise
    tracker.finish_sweep("FAILED")  # a no-op when the block finished the run itself
