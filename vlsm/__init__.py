"""vlsm: vision-language segmentation of echocardiograms, run as Ray Tune grids.

The library behind `python sweeps/paper_grid.py`: data readers and prompts
(`vlsm.data`), models (`vlsm.models`, a registry), the training loop (`vlsm.train`, with
`vlsm.trial_data`, `vlsm.train_state`, `vlsm.evaluate`), checkpoints (`vlsm.checkpoint`)
and the Ray Tune trainable (`vlsm.trainable`, the only module that imports Ray). Grid
axes and metric names live in `vlsm.axes` and are imported from there everywhere else.
The layers and their rules: docs/design.md.
"""

__version__ = "0.1.0"
