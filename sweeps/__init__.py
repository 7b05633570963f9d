"""Sweep entry points and planning: `python sweeps/paper_grid.py` runs the paper grid.

`sweeps.spec` reads the YAML sweep definitions, `sweeps.grid` expands them into trials
with their dependencies; the Ray Tune wiring lives beside them.
"""
