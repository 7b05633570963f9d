"""What the MLflow UI shows first: the experiment's kind (model training, not MLflow 3's
GenAI view) and description, saved views of the runs table (experiment tags
``mlflow.sharedViewState.<key>``) and the links that open them (docs/sweeps.md, "MLflow").
"""

from __future__ import annotations

import json
from typing import Any

from vlsm import axes

__all__ = ["EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "HEADLINE_METRICS", "NOTE_TAG", "VIEWS", "experiment_tags",
           "runs_url", "sweep_note", "view_tags"]

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # the description the UI shows
_SHARED_VIEW_TAG = "mlflow.sharedViewState."

HEADLINE_METRICS: tuple[str, ...] = (axes.TEST_DICE_MEAN, axes.TEST_DICE_STD, axes.BEST_VAL_DICE, axes.BEST_EPOCH)

_TRIALS_ONLY = "tags.`vlsm.role` = 'trial'"


def _columns() -> list[str]:
    """The headline metrics, then the axes (each run's datasets and model are on its page)."""
    return [*(f"metrics.`{name}`" for name in HEADLINE_METRICS),
            *(f"params.`{axis}`" for axis in (*axes.CELL_AXES, *axes.VARIANT_AXES, axes.SEED))]


def _view(*group_by: str) -> dict[str, Any]:
    """One runs-table state in the UI's format (its search facets and its UI state)."""
    return {
        "searchFilter": _TRIALS_ONLY,
        "orderByKey": f"metrics.`{axes.TEST_DICE_MEAN}`",
        "orderByAsc": False,
        "selectedColumns": _columns(),
        "groupBy": None if not group_by else {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "param", "groupByData": key} for key in group_by],
        },
        "useGroupedValuesInCharts": True,
    }


# key -> (what it shows, its state). "trials" is the one the driver's last line links to.
VIEWS: dict[str, tuple[str, dict[str, Any]]] = {
    "trials": ("every trial, best test Dice first", _view()),
    "by-strategy": ("trials grouped by training strategy (group means)", _view("strategy")),
    "by-prompt": ("trials grouped by prompt; as charts, one line per prompt", _view("prompt")),
    "by-model": ("trials grouped by model", _view("model")),
    "by-cell": ("the seeds of each cell together (means over seeds)", _view(*axes.CELL_AXES, *axes.VARIANT_AXES)),
}


def experiment_tags(sweep_name: str, sweep_dir: str, command: str) -> dict[str, str]:
    """Tags of a new experiment: its kind (model training) and its description."""
    return {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, NOTE_TAG: sweep_note(sweep_name, sweep_dir, command)}


def sweep_note(sweep_name: str, sweep_dir: str, command: str) -> str:
    """The description of a sweep (Markdown): what made it and where it lives."""
    lines = [f"Sweep **{sweep_name}** in `{sweep_dir}`."]
    if command:
        lines.append(f"Made by `{command}`.")
    lines.append("Views: " + ", ".join(f"`{key}` ({what})" for key, (what, _) in VIEWS.items()) + ".")
    return "\n\n".join(lines)


def view_tags() -> dict[str, str]:
    """The experiment tags that hold the saved views."""
    return {f"{_SHARED_VIEW_TAG}{key}": json.dumps(state) for key, (_, state) in VIEWS.items()}


def runs_url(ui: str, experiment_id: str, view: str = "trials", *, charts: bool = False) -> str:
    """The link to an experiment's runs in a saved view (charts: as charts, not a table)."""
    if view not in VIEWS:
        raise ValueError(f"runs_url: unknown view {view!r}; expected one of {sorted(VIEWS)}")
    url = f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={view}"
    return f"{url}&compareRunsMode=CHART" if charts else url
