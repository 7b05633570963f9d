"""Chained trials inside one Ray Tune experiment.

`ChainSearcher` hands Tune one grid cell at a time, in planning order, and holds back a
synth-PT:real-FT cell until its own upstream synthetic cell is done: then it starts at
once, with `init_from` set to the upstream's final checkpoint (which holds the
upstream's best-validation-Dice weights under `best/`).

`ChainCallback` records how each trial ended (`sweeps.outcome.trial_outcome`; a
Searcher sees result dicts only, a Callback also sees the persisted checkpoint) in the
shared `ChainState`. Recording a failure marks the finetunes waiting on it `not_run`
with the reason, and every change is written to `chain_state.json` at once, so the file
never lags behind what the searcher knows (Ray calls the searcher's
`on_trial_complete` before the callbacks, and may end the experiment without another
`suggest`). Both live in the driver process; `ChainState` is saved with the searcher, so
a resumed sweep knows what finished, what failed and where the checkpoints are.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.search import Searcher

from sweeps.cell import Cell
from sweeps.outcome import (
    DONE,
    FINISHED_STATUSES,
    NOT_RUN,
    PENDING,
    RUNNING,
    Outcome,
    trial_outcome,
)
from vlsm.atomic import write_text_atomic
from vlsm.checkpoint import BEST_DIR  # the best-validation-Dice weights inside a checkpoint

logger = logging.getLogger(__name__)

__all__ = ["CellState", "ChainCallback", "ChainSearcher", "ChainState"]


@dataclass
class CellState:
    status: str = PENDING
    trial_id: str | None = None
    checkpoint: str | None = None  # persisted path (local folder or storage URI) of the final checkpoint
    reason: str | None = None  # why a cell failed or was not run
    upstream: str | None = None  # the cell it starts from (synth-PT:real-FT)


@dataclass
class ChainState:
    """What the driver knows about every cell; saved with the searcher."""

    cells: dict[str, CellState] = field(default_factory=dict)
    path: str | None = None  # where `save` writes it (<output>/chain_state.json)

    def save(self) -> None:
        """Write atomically to `path` (the driver reads it after the run and at export)."""
        if self.path is not None:
            write_text_atomic(self.path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> ChainState:
        state = cls.from_json(Path(path).read_text())
        state.path = str(path)
        return state

    def to_json(self) -> str:
        return json.dumps({k: asdict(v) for k, v in self.cells.items()}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ChainState:
        return cls({k: CellState(**v) for k, v in json.loads(text).items()})

    def start(self, cell_id: str, trial_id: str) -> None:
        entry = self.cells[cell_id]
        entry.status, entry.trial_id = RUNNING, trial_id
        self.save()

    def record(self, cell_id: str, trial_id: str, outcome: Outcome) -> None:
        """A trial's outcome; when it is not done, the cells waiting on it will not run."""
        entry = self.cells[cell_id]
        entry.status, entry.reason, entry.trial_id = outcome.status, outcome.reason, trial_id
        entry.checkpoint = outcome.checkpoint or entry.checkpoint
        if outcome.status != DONE:
            for other_id, other in self.cells.items():
                if other.upstream == cell_id and other.status == PENDING:
                    other.status = NOT_RUN
                    other.reason = f"upstream {cell_id} {outcome.status}: {outcome.reason}"
                    logger.warning("%s not run: %s", other_id, other.reason)
        self.save()

    def finished(self) -> bool:
        return all(s.status in FINISHED_STATUSES for s in self.cells.values())


class ChainSearcher(Searcher):
    """Suggest grid cells in order, each finetune once its upstream is done."""

    def __init__(
        self,
        cells: list[Cell],
        configs: dict[str, dict[str, Any]],
        state: ChainState,
        *,
        metric: str,
        mode: str = "max",
    ):
        super().__init__(metric=metric, mode=mode)
        self.cells = cells
        self.configs = configs  # cell_id -> trial config (without init_from)
        self.state = state
        for cell in cells:
            self.state.cells.setdefault(cell.cell_id, CellState(upstream=cell.upstream))

    # -- Searcher API ---------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        for cell in self.cells:
            if self.state.cells[cell.cell_id].status != PENDING:
                continue
            init_from = None
            if cell.upstream is not None:
                upstream = self.state.cells[cell.upstream]
                if upstream.status != DONE or upstream.checkpoint is None:
                    continue  # wait for its own upstream, not the whole stage
                init_from = f"{upstream.checkpoint.rstrip('/')}/{BEST_DIR}"
            self.state.start(cell.cell_id, trial_id)
            config = copy.deepcopy(self.configs[cell.cell_id])
            config["init_from"] = init_from
            logger.info("starting %s%s", cell.cell_id, f" from {cell.upstream}" if init_from else "")
            return config
        return Searcher.FINISHED if self.state.finished() else None  # else dependents wait

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Nothing to do: ChainCallback records the outcome, checkpoint included."""

    def get_state(self) -> dict:
        return {"chain_state": self.state.to_json()}

    def set_state(self, state: dict) -> None:
        restored = ChainState.from_json(state["chain_state"])
        self.state.cells.update(restored.cells)
        self.state.save()

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:  # Ray's own file, written where Ray says
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))


class ChainCallback(Callback):
    """Record each finished trial's outcome (status, reason, checkpoint) in the ChainState."""

    def __init__(self, state: ChainState):
        self.state = state

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._record(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._record(trial, error=True)

    def _record(self, trial, *, error: bool) -> None:
        cell = Cell.of_config(trial.config)
        if cell is not None and cell.cell_id in self.state.cells:
            self.state.record(cell.cell_id, trial.trial_id, trial_outcome(trial, error=error))
