"""Chained trials inside one Ray Tune experiment.

`ChainSearcher` hands Tune one grid cell at a time, in planning order, and holds back a
synth-PT:real-FT cell until its own upstream synthetic cell has finished: then it
starts at once, with `init_from` set to the upstream's final checkpoint (which holds
the upstream's best-validation-Dice weights under `best/`). When an upstream fails for
good, its finetunes are marked "not run" with the reason, and the sweep goes on.

`ChainCallback` is the other half: it sees each finished trial's persisted checkpoint
(a Searcher only sees result dicts) and records it in the shared `ChainState`.
Both live in the driver process; `ChainState` is saved with the searcher, so a resumed
sweep knows what finished, what failed and where the checkpoints are.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.search import Searcher

from sweeps.grid import Cell
from vlsm.checkpoint import BEST_DIR  # the best-validation-Dice weights inside a checkpoint
from vlsm.tracking import checkpoint_uri, no_best_reason

logger = logging.getLogger(__name__)

PENDING, RUNNING, DONE, FAILED, NOT_RUN = "pending", "running", "done", "failed", "not_run"
CELL_KEY = "cell_id"  # the key in every trial config's `tags` that names its grid cell


def cell_of(config: dict[str, Any]) -> str | None:
    """The grid cell a trial config belongs to (TrainConfig.tags carries it)."""
    return (config.get("tags") or {}).get(CELL_KEY)


@dataclass
class CellState:
    status: str = PENDING
    trial_id: str | None = None
    checkpoint: str | None = None  # persisted path (local folder or storage URI) of the final checkpoint
    reason: str | None = None  # why a cell failed or was not run


@dataclass
class ChainState:
    """What the driver knows about every cell; saved with the searcher."""

    cells: dict[str, CellState] = field(default_factory=dict)
    path: str | None = None  # where `save` writes it (<output>/chain_state.json)

    def save(self) -> None:
        """Write atomically to `path` (the driver reads it after the run and at export)."""
        if self.path is None:
            return
        target = Path(self.path)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, target)

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

    def cell_of_trial(self, trial_id: str) -> str | None:
        for cell_id, state in self.cells.items():
            if state.trial_id == trial_id:
                return cell_id
        return None


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
            self.state.cells.setdefault(cell.cell_id, CellState())

    # -- Searcher API ---------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        self._propagate_failures()
        for cell in self.cells:
            entry = self.state.cells[cell.cell_id]
            if entry.status != PENDING:
                continue
            init_from = None
            if cell.upstream is not None:
                upstream = self.state.cells[cell.upstream]
                if upstream.status != DONE or upstream.checkpoint is None:
                    continue  # wait for its own upstream, not the whole stage
                init_from = f"{upstream.checkpoint.rstrip('/')}/{BEST_DIR}"
            entry.status = RUNNING
            entry.trial_id = trial_id
            config = copy.deepcopy(self.configs[cell.cell_id])
            config["init_from"] = init_from
            logger.info("starting %s%s", cell.cell_id, f" from {cell.upstream}" if init_from else "")
            self.state.save()
            return config
        if all(s.status in (DONE, FAILED, NOT_RUN) for s in self.state.cells.values()):
            return Searcher.FINISHED
        return None  # something is still running; its dependents wait

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        cell_id = self.state.cell_of_trial(trial_id)
        if cell_id is None:
            return
        entry = self.state.cells[cell_id]
        if error:
            entry.status = FAILED
            entry.reason = entry.reason or "trial failed after all retries (see its error.txt)"
        elif entry.status == RUNNING:
            entry.status = DONE
        self._propagate_failures()
        self.state.save()

    def get_state(self) -> dict:
        return {"chain_state": self.state.to_json()}

    def set_state(self, state: dict) -> None:
        restored = ChainState.from_json(state["chain_state"])
        self.state.cells.update(restored.cells)
        self.state.save()

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))

    # -- helpers ----------------------------------------------------------------------
    def _propagate_failures(self) -> None:
        for cell in self.cells:
            entry = self.state.cells[cell.cell_id]
            if entry.status != PENDING or cell.upstream is None:
                continue
            upstream = self.state.cells[cell.upstream]
            if upstream.status in (FAILED, NOT_RUN):
                entry.status = NOT_RUN
                entry.reason = f"upstream {cell.upstream} {upstream.status}: {upstream.reason}"
                logger.warning("%s not run: %s", cell.cell_id, entry.reason)


class ChainCallback(Callback):
    """Record each finished trial's persisted checkpoint in the shared ChainState."""

    def __init__(self, state: ChainState):
        self.state = state

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        cell_id = cell_of(trial.config)
        if cell_id not in self.state.cells:
            return
        entry = self.state.cells[cell_id]
        entry.trial_id = trial.trial_id
        checkpoint = trial.checkpoint
        no_best = no_best_reason(trial.last_result)
        if checkpoint is None or no_best:  # no best/ weights for a finetune to start from
            entry.status = FAILED
            entry.reason = "trial finished without a checkpoint" if checkpoint is None else no_best
            if checkpoint is not None:
                entry.checkpoint = checkpoint_uri(checkpoint)
            self.state.save()
            return
        entry.checkpoint = checkpoint_uri(checkpoint)
        entry.status = DONE
        self.state.save()

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        cell_id = cell_of(trial.config)
        if cell_id in self.state.cells:
            self.state.cells[cell_id].status = FAILED
            self.state.cells[cell_id].reason = "trial failed after all retries (see its error.txt)"
            self.state.save()
