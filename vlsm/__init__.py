"""vlsm: vision-language segmentation of echocardiograms, run as Ray Tune grids: the
library behind `python sweeps/paper_grid.py` (its modules and layers: docs/design.md, "Layout").
"""

__version__ = "0.1.0"
