"""MLflow tracking for a sweep: one experiment, a parent run, one nested run per trial,
all logged by a Ray Tune callback in the driver (trials never talk to MLflow); a cell's
run id is kept in its record, so a resume continues its run (docs/design.md, "One record
per cell")."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from sweeps import mlflow_ui
from sweeps.cell import CELL_ID
from sweeps.folder import SweepFolder
from sweeps.record import DONE, MLFLOW_STATUS, CellRecord, CellRecords
from vlsm import axes
from vlsm.atomic import disk_full
from vlsm.checkpoint import BEST_DIR, PER_IMAGE_FILE
from vlsm.system_metrics import PREFIX as SYSTEM_PREFIX

logger = logging.getLogger(__name__)

TAG_ROLE = "vlsm.role"  # "sweep" (parent) or "trial"
TAG_SWEEP_DIR = "vlsm.sweep_dir"
TAG_SWEEP_KEY = "vlsm.sweep_key"  # a hash of sweep_dir, which may hold quotes: safe in a search filter
TAG_CELL = f"vlsm.{CELL_ID}"
TAG_TRIAL = "vlsm.trial_id"
TAG_UPSTREAM_CELL = f"vlsm.upstream_{CELL_ID}"
TAG_UPSTREAM_RUN = "vlsm.upstream_run_id"
TAG_STATUS = "vlsm.status"
TAG_REASON = "vlsm.reason"
TAG_CHECKPOINT = "vlsm.checkpoint"  # where the trial's final checkpoint (with best/) lives
TAG_MODEL = "vlsm.model"  # on shared storage: the URI of the pyfunc model (the checkpoint's best/)
PARENT_TAG = "mlflow.parentRunId"

EPOCH_METRICS = (axes.TRAIN_LOSS, axes.VAL_LOSS, axes.VAL_DICE, axes.BEST_VAL_DICE, axes.BEST_EPOCH, axes.LR,
                 axes.IMAGES_PER_S, axes.SECONDS)
FINAL_METRICS = (axes.TEST_DICE_MEAN, axes.TEST_DICE_STD)


def tracking_uri_problem(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why MLflow cannot log to `uri`, or None; checked before anything runs (the MLflow
    client itself retries an unreachable server for minutes, then raises)."""
    import urllib.error
    import urllib.parse
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
        folder = Path(uri[len("sqlite:///"):]).parent
    elif uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks")):  # a file store
        folder = Path(urllib.parse.urlparse(uri).path if uri.startswith("file:") else uri)
    else:
        return None
    problem = not_writable(folder)
    if problem is not None:
        return f"{uri}: {problem}"
    return damaged_sqlite_store(Path(uri[len("sqlite:///"):])) if uri.startswith("sqlite:///") else None


def damaged_sqlite_store(path: Path) -> str | None:
    """Why the SQLite MLflow store at path is damaged (a truncated file, broken pages: SQLite's
    `PRAGMA quick_check`, 0.14 s for 22 MB), or None; None too for a store not made yet."""
    import shlex
    import sqlite3

    if not path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as err:
        rows = [(str(err),)]
    if rows == [("ok",)]:
        return None
    aside = f"mv {shlex.quote(str(path))} {shlex.quote(f'{path}.damaged')}"
    return (f"{path}: the MLflow store is damaged ({rows[0][0]}); move it aside ({aside}) and "
            f"run the same command again: a new store is made, with runs for the trials that run from then on "
            f"(their epochs since their last checkpoint); cells/ and exports/ keep every trial's results")


def _open_sqlite_store(tracking_uri: str, artifact_root: Path) -> None:
    """A new SQLite store, its artifacts in the sweep folder; MLflow's `Default` experiment
    is deleted (it would put artifacts under the current directory; the UI lists ours alone)."""
    if not tracking_uri.startswith("sqlite:///") or Path(tracking_uri[len("sqlite:///"):]).exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(tracking_uri, default_artifact_root=artifact_root.as_uri())
    try:
        store.delete_experiment(SqlAlchemyStore.DEFAULT_EXPERIMENT_ID)
    finally:
        store.engine.dispose()


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


_TRACKERS: dict[str, SweepTracker] = {}


class SweepTracker:
    """The MLflow side of one sweep: its experiment, its parent run, its trial runs."""

    def __init__(self, tracking_uri: str, experiment_name: str, sweep_dir: Path, command: str = ""):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.sweep_dir = str(Path(sweep_dir).resolve())
        self.sweep_key = hashlib.sha1(self.sweep_dir.encode()).hexdigest()[:16]
        self.name, self.command = experiment_name, command
        artifacts = SweepFolder(Path(self.sweep_dir)).mlartifacts
        _open_sqlite_store(tracking_uri, artifacts)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._find_or_create_experiment(artifacts)
        self.parent_run_id = self._find_or_create_parent()
        self._runs: dict[str, str] = {}  # cell_id -> run_id
        self._steps: dict[str, dict[str, set[int]]] = {}  # run_id -> metric -> steps logged
        self._sweep_finished = False
        _TRACKERS[self.sweep_dir] = self  # for MLflowTrialCallback.setup, once set up

    def _find_or_create_experiment(self, artifacts: Path) -> str:
        experiment = self.client.get_experiment_by_name(self.name)
        if experiment is None:
            local = self.tracking_uri.startswith("sqlite:///")
            experiment_id = self.client.create_experiment(
                self.name, artifact_location=artifacts.as_uri() if local else None,
                tags=mlflow_ui.experiment_tags(self.name, self.sweep_dir, self.command))
        else:
            experiment_id = experiment.experiment_id
        for key, value in mlflow_ui.view_tags().items():  # this version's views
            self.client.set_experiment_tag(experiment_id, key, value)
        return experiment_id

    def _search(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=10)

    def _find_or_create_parent(self) -> str:
        found = self._search(f"tags.`{TAG_ROLE}` = 'sweep' and tags.`{TAG_SWEEP_KEY}` = '{self.sweep_key}'")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id, run_name=f"{self.name} ({Path(self.sweep_dir).name})",
            tags={TAG_ROLE: "sweep", TAG_SWEEP_DIR: self.sweep_dir, TAG_SWEEP_KEY: self.sweep_key,
                  mlflow_ui.NOTE_TAG: mlflow_ui.sweep_note(self.name, self.sweep_dir, self.command)})
        return run.info.run_id

    def log_sweep_params(self, params: dict[str, Any]) -> None:
        existing = self.client.get_run(self.parent_run_id).data.params
        for key, value in _flatten(params).items():
            if key not in existing:
                self.client.log_param(self.parent_run_id, key, value)

    def trial_run(self, record: CellRecord, upstream_run: str | None = None) -> str:
        """A cell's run: the one its record names or its tag finds, else a new nested one."""
        if record.cell_id in self._runs:
            return self._runs[record.cell_id]
        run = self._existing_run(record)
        if run is not None:
            run_id = run.info.run_id
            # a resumed trial replays the epochs after its last checkpoint: log each once
            self._steps[run_id] = {name: {m.step for m in self.client.get_metric_history(run_id, name)}
                                   for name in run.data.metrics}
        else:
            tags = {PARENT_TAG: self.parent_run_id, TAG_ROLE: "trial", TAG_CELL: record.cell_id, **record.axes}
            if record.upstream:
                tags[TAG_UPSTREAM_CELL] = record.upstream
                if upstream_run:
                    tags[TAG_UPSTREAM_RUN] = upstream_run
            run_id = self.client.create_run(self.experiment_id, run_name=record.cell_id, tags=tags).info.run_id
            self._log_trial_inputs(run_id, record)
        self._runs[record.cell_id] = run_id
        return run_id

    def _existing_run(self, record: CellRecord) -> Any:
        """The record's run, else one its tag finds (a driver killed before the record had
        its id), else None."""
        from mlflow.exceptions import MlflowException

        if record.run_id is not None:
            with contextlib.suppress(MlflowException):  # not in this store (--mlflow-uri changed)
                return self.client.get_run(record.run_id)
        found = self._search(f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TAG_CELL}` = '{record.cell_id}'")
        return found[0] if found else None

    def _log_trial_inputs(self, run_id: str, record: CellRecord) -> None:
        """Parameters and datasets (a dataset that cannot be read is a warning)."""
        from mlflow.entities import Param

        from sweeps.mlflow_datasets import dataset_inputs

        rest = {k: v for k, v in record.config.items() if k not in record.axes}  # the axes by their own names
        params = [Param(key, value) for key, value in {**record.axes, **_flatten(rest)}.items()]
        for start in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(run_id, params=params[start:start + 100])
        try:
            self.client.log_inputs(run_id, datasets=dataset_inputs(record.config))
        except (OSError, KeyError, ValueError) as err:
            logger.warning("MLflow: the datasets of %s are not logged: %s", run_id, err)

    def log_result(self, run_id: str, result: dict[str, Any], step: int) -> None:
        """A report's epoch, final and system metrics (`vlsm.system_metrics`) at `step`."""
        system = tuple(name for name in result if name.startswith(SYSTEM_PREFIX))
        self.log_metrics(run_id, result, (*EPOCH_METRICS, *FINAL_METRICS, *system), step)

    def log_metrics(self, run_id: str, metrics: dict[str, Any], names: tuple[str, ...], step: int) -> None:
        """The finite ones of `names` at `step`, each (run, metric, step) once, in one request
        (a dozen calls per report held up Tune's event loop)."""
        from mlflow.entities import Metric

        logged = self._steps.setdefault(run_id, {})
        now = int(time.time() * 1000)
        batch = []
        for name in dict.fromkeys(names):
            value = metrics.get(name)
            if isinstance(value, int | float) and math.isfinite(float(value)) and step not in logged.get(name, ()):
                batch.append(Metric(name, float(value), now, step))
        if batch:
            self.client.log_batch(run_id, metrics=batch)
        for metric in batch:
            logged.setdefault(metric.key, set()).add(step)

    def log_best_model(self, run_id: str, cell_id: str, best: Path, step: int) -> str:
        """A local best/ folder as the run's pyfunc model (`sweeps.mlflow_model`)."""
        from sweeps.mlflow_model import MODEL_NAME, add_pyfunc_files, log_model

        # a trial Ray restored after it had finished reports its end again: its model is there
        logged = self.client.search_logged_models([self.experiment_id], max_results=1, filter_string=(
            f"name = '{MODEL_NAME}' AND source_run_id = '{run_id}'"))
        if logged:
            return logged[0].model_id
        add_pyfunc_files(str(best))
        return log_model(self.client, self.experiment_id, run_id, best, step=step, tags={TAG_CELL: cell_id})

    def finish_trial(self, run_id: str, status: str, *, reason: str | None = None,
                     artifacts: list[Path] | None = None) -> None:
        self.client.set_tag(run_id, TAG_STATUS, status)
        if reason:
            self.client.set_tag(run_id, TAG_REASON, reason[:5000])
        for path in artifacts or []:  # files
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status=MLFLOW_STATUS[status])

    def finish_sweep(self, status: str = "FINISHED") -> None:
        """End the parent run with an MLflow status; only the first call of a launch counts."""
        if not self._sweep_finished:
            self._sweep_finished = True
            self.client.set_terminated(self.parent_run_id, status=status)


def _guarded(method):
    """A failing MLflow call is logged, never raised into Tune (it would abort the sweep or
    fail a finished trial); but a full disk or quota stops the sweep, which the same command
    resumes (logged on, the runs would miss what was lost)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any MLflow or network error
            if disk_full(err) is not None:  # its store is full: stop, the same command resumes
                raise
            logger.warning("MLflow logging failed in %s: %s", method.__name__, err)
            return None

    return wrapper


def cell_run(tracker: SweepTracker, records: CellRecords, cell_id: str) -> str:
    """The cell's run (`SweepTracker.trial_run`), its id kept in the record."""
    record = records[cell_id]
    upstream = records.cells.get(record.upstream or "")
    run_id = tracker.trial_run(record, upstream.run_id if upstream else None)
    if record.run_id != run_id:
        records.update(cell_id, run_id=run_id)
    return run_id


class MLflowTrialCallback(Callback):
    """Ray Tune callback: log each trial's config, epochs and outcome (read from its record)."""

    def __init__(self, tracker: SweepTracker, records: CellRecords):
        self.tracker, self.records = tracker, records

    def setup(self, **info) -> None:
        """Log through this launch's tracker: Ray restores a resumed experiment's callbacks
        from its first launch's pickle, with the MLflow URI given then."""
        current = _TRACKERS.get(self.tracker.sweep_dir)
        if current is None or current is self.tracker:
            return
        if current.tracking_uri != self.tracker.tracking_uri:
            logger.warning("MLflow: this sweep logged to %s before; it logs to %s from now on (runs of "
                           "trials finished before stay there)", self.tracker.tracking_uri, current.tracking_uri)
        self.tracker = current

    @_guarded
    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        run_id = cell_run(self.tracker, self.records, trial.config[CELL_ID])
        self.tracker.client.set_tag(run_id, TAG_TRIAL, trial.trial_id)

    @_guarded
    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        run_id = cell_run(self.tracker, self.records, trial.config[CELL_ID])
        step = int(result.get(axes.EPOCH, result.get("training_iteration", 0)))
        self.tracker.log_result(run_id, result, step)

    @_guarded
    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        """Close the run with the record's outcome (`RecordCallback` runs first); a done
        trial's best/ becomes its model, per_image.parquet an artifact (tags on shared storage)."""
        record = self.records[trial.config[CELL_ID]]
        run_id = cell_run(self.tracker, self.records, record.cell_id)
        artifacts: list[Path] = []
        if record.checkpoint is not None:
            self.tracker.client.set_tag(run_id, TAG_CHECKPOINT, record.checkpoint)
            if record.status == DONE:
                artifacts = self._log_model(run_id, record, trial.checkpoint)
        self.tracker.finish_trial(run_id, record.status, reason=record.reason, artifacts=artifacts)

    on_trial_error = on_trial_complete  # the record says how it ended

    def _log_model(self, run_id: str, record: CellRecord, checkpoint) -> list[Path]:
        """The best weights as the run's model; returns the local files to log as artifacts."""
        if checkpoint.filesystem is None or checkpoint.filesystem.type_name == "local":
            folder = Path(checkpoint.path)
            if (folder / BEST_DIR).is_dir():
                self.tracker.log_best_model(run_id, record.cell_id, folder / BEST_DIR, record.best_epoch or 0)
            return [p for p in (folder / PER_IMAGE_FILE,) if p.exists()]
        from sweeps.mlflow_model import add_pyfunc_files

        add_pyfunc_files(f"{checkpoint.path}/{BEST_DIR}", checkpoint.filesystem)
        self.tracker.client.set_tag(run_id, TAG_MODEL, f"{record.checkpoint.rstrip('/')}/{BEST_DIR}")
        return []
