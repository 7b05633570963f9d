"""Sweep entry points and planning: `python sweeps/paper_grid.py` runs the paper grid.

`sweeps.spec` reads the YAML sweep definitions, `sweeps.grid` expands them into cells
(`sweeps.cell`) with their dependencies; the Ray Tune wiring (searcher, callbacks, tuner),
MLflow tracking and the Parquet export live beside them. docs/design.md, "Layout".
"""
