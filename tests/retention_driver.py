"""A Ray Tune driver for tests/test_retention.py: dies right after a checkpoint is saved.

    python tests/retention_driver.py STORAGE KEEP [EXIT_AFTER]

KEEP: "retention" (the sweep's setting: `sweeps.retention.checkpoint_config()` and
CheckpointRetention) or an integer for Ray's own num_to_keep. EXIT_AFTER: the driver calls os._exit right after Ray
has processed that many saved checkpoints (and deleted what num_to_keep drops), before
the next experiment snapshot: the window a killed driver can land in. Without it the
driver runs (or resumes) the experiment to the end and prints the final iteration.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import ray
from ray import tune

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sweeps.retention import CheckpointRetention, checkpoint_config  # noqa: E402

EPOCHS = 4


def count_epochs(config: dict) -> None:
    """Report EPOCHS epochs, a checkpoint each, continuing from the restored one."""
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = int(Path(folder, "epoch.txt").read_text())
    for epoch in range(start + 1, EPOCHS + 1):
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "epoch.txt").write_text(str(epoch))
            tune.report({"epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(folder))


class ExitAfterSaves(tune.Callback):
    """Kill the driver (no cleanup, like SIGKILL) after n saved checkpoints, once.

    Ray restores callbacks with the experiment, so the marker file keeps the resumed
    driver alive.
    """

    def __init__(self, n: int, marker: str):
        self.n, self.marker, self.seen = n, marker, 0

    def on_trial_save(self, iteration: int, trials: list, trial, **info) -> None:
        self.seen += 1
        if self.seen == self.n and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(3)


def main() -> None:
    storage, keep = sys.argv[1], sys.argv[2]
    exit_after = int(sys.argv[3]) if len(sys.argv) > 3 else None
    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    path = f"{storage}/exp"
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=count_epochs, resume_unfinished=True, resume_errored=False)
    else:
        callbacks: list[tune.Callback] = [ExitAfterSaves(exit_after, f"{storage}/killed")] if exit_after else []
        if keep == "retention":
            callbacks.insert(0, CheckpointRetention())
            checkpoints = checkpoint_config()
        else:
            checkpoints = tune.CheckpointConfig(num_to_keep=int(keep))
        tuner = tune.Tuner(
            count_epochs,
            run_config=tune.RunConfig(name="exp", storage_path=storage, callbacks=callbacks,
                                      checkpoint_config=checkpoints, verbose=0),
        )
    result = tuner.fit()[0]
    print(f"error={result.error is not None} epoch={result.metrics.get('epoch')}")


if __name__ == "__main__":
    main()
