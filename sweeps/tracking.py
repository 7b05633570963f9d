"""MLflow tracking for a sweep: one experiment, a parent run, one nested run per trial.

A Ray Tune callback in the driver does all the logging (trials never talk to MLflow),
so the same code works with a local SQLite store and with a tracking server on a
cluster head. Runs are found again by tags (`vlsm.sweep_dir`, `vlsm.cell_id`), so a
resumed sweep continues the same runs instead of making duplicates.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from pathlib import Path
from typing import Any

from ray.tune import Callback

from sweeps.cell import CELL_ID, Cell
from sweeps.folder import SweepFolder
from sweeps.outcome import DONE, MLFLOW_STATUS, trial_outcome
from vlsm import axes
from vlsm.checkpoint import BEST_DIR, PER_IMAGE_FILE

logger = logging.getLogger(__name__)

TAG_ROLE = "vlsm.role"  # "sweep" (parent) or "trial"
TAG_SWEEP_DIR = "vlsm.sweep_dir"
TAG_SWEEP_KEY = "vlsm.sweep_key"  # a hash of sweep_dir: safe inside a search filter
TAG_CELL = f"vlsm.{CELL_ID}"
TAG_TRIAL = "vlsm.trial_id"
TAG_UPSTREAM_CELL = f"vlsm.upstream_{CELL_ID}"
TAG_UPSTREAM_RUN = "vlsm.upstream_run_id"
TAG_STATUS = "vlsm.status"
TAG_REASON = "vlsm.reason"
TAG_CHECKPOINT = "vlsm.checkpoint"  # where the trial's final checkpoint (with best/) lives
PARENT_TAG = "mlflow.parentRunId"

# Per-epoch metrics logged with step=epoch; final metrics logged once.
EPOCH_METRICS = (
    axes.TRAIN_LOSS, axes.VAL_LOSS, axes.VAL_DICE, axes.BEST_VAL_DICE,
    axes.LR, axes.IMAGES_PER_S, axes.SECONDS,
)
FINAL_METRICS = (axes.TEST_DICE_MEAN, axes.TEST_DICE_STD)


def tracking_uri_problem(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why MLflow cannot log to `uri`, or None; checked before anything runs (the MLflow
    client itself retries an unreachable server for minutes, then raises)."""
    import urllib.error
    import urllib.request

    from vlsm.atomic import not_writable

    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
                return None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            return f"no MLflow tracking server answers at {uri} ({reason}); start one or give another --mlflow-uri"
    if uri.startswith("sqlite:///"):
        problem = not_writable(Path(uri[len("sqlite:///"):]).parent)
        return None if problem is None else f"{uri}: {problem}"
    return None


def sweep_key(sweep_dir: str | Path) -> str:
    """A short hash of a sweep folder's absolute path (folder names may hold quotes)."""
    return hashlib.sha1(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:16]


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


# The tracker this process made for each sweep folder (see MLflowTrialCallback.setup).
_TRACKERS: dict[str, SweepTracker] = {}


class SweepTracker:
    """The MLflow side of one sweep: its experiment, its parent run, its trial runs."""

    def __init__(self, tracking_uri: str, experiment_name: str, sweep_dir: Path):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.sweep_dir = str(Path(sweep_dir).resolve())
        self.sweep_key = sweep_key(self.sweep_dir)
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is None:
            artifact_location = None
            if tracking_uri.startswith("sqlite:///"):
                artifact_location = SweepFolder(Path(self.sweep_dir)).mlartifacts.as_uri()
            self.experiment_id = self.client.create_experiment(
                experiment_name, artifact_location=artifact_location
            )
        else:
            self.experiment_id = experiment.experiment_id
        self.parent_run_id = self._find_or_create_parent()
        self._runs: dict[str, str] = {}  # cell_id -> run_id
        self._steps: dict[str, dict[str, set[int]]] = {}  # run_id -> metric -> steps logged
        self._sweep_finished = False
        _TRACKERS[self.sweep_dir] = self  # only once it is fully set up

    def _search(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=10)

    def _find_or_create_parent(self) -> str:
        found = self._search(f"tags.`{TAG_ROLE}` = 'sweep' and tags.`{TAG_SWEEP_KEY}` = '{self.sweep_key}'")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=Path(self.sweep_dir).name,
            tags={TAG_ROLE: "sweep", TAG_SWEEP_DIR: self.sweep_dir, TAG_SWEEP_KEY: self.sweep_key},
        )
        return run.info.run_id

    def log_sweep_params(self, params: dict[str, Any]) -> None:
        existing = self.client.get_run(self.parent_run_id).data.params
        for key, value in _flatten(params).items():
            if key not in existing:
                self.client.log_param(self.parent_run_id, key, value)

    def trial_run(self, cell_id: str, config: dict[str, Any] | None = None) -> str:
        """The run of a cell: found by tag (resume) or created, nested under the parent."""
        if cell_id in self._runs:
            return self._runs[cell_id]
        found = self._search(
            f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TAG_CELL}` = '{cell_id}'"
        )
        if found:
            run_id = found[0].info.run_id
            # a resumed trial replays the epochs after its last checkpoint: log each once
            self._steps[run_id] = {
                name: {m.step for m in self.client.get_metric_history(run_id, name)}
                for name in (*EPOCH_METRICS, *FINAL_METRICS)
            }
        else:
            tags = {PARENT_TAG: self.parent_run_id, TAG_ROLE: "trial", TAG_CELL: cell_id}
            cell = Cell.of_config(config) if config else None
            if cell is not None:
                tags.update(cell.axes())
                if cell.upstream:
                    tags[TAG_UPSTREAM_CELL] = cell.upstream
                    tags[TAG_UPSTREAM_RUN] = self.trial_run(cell.upstream)
            run = self.client.create_run(self.experiment_id, run_name=cell_id, tags=tags)
            run_id = run.info.run_id
            if config:
                for key, value in _flatten(config).items():
                    self.client.log_param(run_id, key, value)
        self._runs[cell_id] = run_id
        return run_id

    def log_metrics(self, run_id: str, metrics: dict[str, Any], names: tuple[str, ...], step: int) -> None:
        """Log the finite ones of `names` at `step`, each (run, metric, step) once."""
        logged = self._steps.setdefault(run_id, {})
        for name in names:
            value = metrics.get(name)
            if isinstance(value, int | float) and math.isfinite(float(value)) and step not in logged.get(name, ()):
                self.client.log_metric(run_id, name, float(value), step=step)
                logged.setdefault(name, set()).add(step)

    def finish_trial(self, cell_id: str, status: str, *, reason: str | None = None,
                     artifacts: list[Path] | None = None) -> None:
        run_id = self.trial_run(cell_id)
        self.client.set_tag(run_id, TAG_STATUS, status)
        if reason:
            self.client.set_tag(run_id, TAG_REASON, reason[:5000])
        for path in artifacts or []:
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status=MLFLOW_STATUS[status])

    def finish_sweep(self, status: str = "FINISHED") -> None:
        """End the parent run with an MLflow status; only the first call of a launch counts."""
        if not self._sweep_finished:
            self._sweep_finished = True
            self.client.set_terminated(self.parent_run_id, status=status)


def _guarded(method):
    """MLflow is secondary to the sweep: a failing call is logged, never raised into Tune
    (an exception in a callback would abort the sweep or fail a finished trial)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any MLflow or network error
            logger.warning("MLflow logging failed in %s: %s", method.__name__, err)
            return None

    return wrapper


class MLflowTrialCallback(Callback):
    """Ray Tune callback: log each trial's config, epochs, results and checkpoint."""

    def __init__(self, tracker: SweepTracker, *, log_checkpoints: bool = True):
        self.tracker = tracker
        self.log_checkpoints = log_checkpoints

    def setup(self, **info) -> None:
        """Log through this launch's tracker for the sweep folder.

        Ray restores a resumed experiment's callbacks from the pickle of its first launch,
        tracker (and MLflow URI) included; without this, trial runs would go to the old
        store while the driver logs the sweep to the one given now.
        """
        current = _TRACKERS.get(self.tracker.sweep_dir)
        if current is None or current is self.tracker:
            return
        if current.tracking_uri != self.tracker.tracking_uri:
            logger.warning("MLflow: this sweep logged to %s before; it logs to %s from now on (runs of "
                           "trials finished before stay there)", self.tracker.tracking_uri, current.tracking_uri)
        self.tracker = current

    @_guarded
    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        cell = Cell.of_config(trial.config)
        if cell is not None:
            run_id = self.tracker.trial_run(cell.cell_id, trial.config)
            self.tracker.client.set_tag(run_id, TAG_TRIAL, trial.trial_id)

    @_guarded
    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        cell = Cell.of_config(trial.config)
        if cell is not None:
            run_id = self.tracker.trial_run(cell.cell_id, trial.config)
            step = int(result.get(axes.EPOCH, result.get("training_iteration", 0)))
            self.tracker.log_metrics(run_id, result, EPOCH_METRICS, step)
            self.tracker.log_metrics(run_id, result, FINAL_METRICS, step)

    @_guarded
    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial, error=False)

    @_guarded
    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial, error=True)

    def _finish(self, trial, *, error: bool) -> None:
        """Close the trial's run with its outcome; a local checkpoint's best/ weights and
        per-image results become artifacts (on shared storage the tag names them)."""
        cell = Cell.of_config(trial.config)
        if cell is None:
            return
        outcome = trial_outcome(trial, error=error)
        artifacts: list[Path] = []
        if outcome.checkpoint is not None:
            self.tracker.client.set_tag(self.tracker.trial_run(cell.cell_id), TAG_CHECKPOINT, outcome.checkpoint)
            checkpoint = trial.checkpoint
            local = checkpoint.filesystem is None or checkpoint.filesystem.type_name == "local"
            if self.log_checkpoints and local and outcome.status == DONE:
                folder = Path(checkpoint.path)
                artifacts = [p for p in (folder / BEST_DIR, folder / PER_IMAGE_FILE) if p.exists()]
        self.tracker.finish_trial(cell.cell_id, outcome.status, reason=outcome.reason, artifacts=artifacts)
