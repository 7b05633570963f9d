"""vlsm: vision-language segmentation of echocardiograms, run as Ray Tune grids.

The library behind `python sweeps/paper_grid.py`: data readers and prompts
(`vlsm.data`), models (`vlsm.models`), the training loop (`vlsm.train`), the Ray Tune
trainable (`vlsm.trainable`) and tracking. Grid axes and metric names live in
`vlsm.axes` and are imported from there everywhere else.
"""

__version__ = "0.1.0"
