"""The runner: `python sweeps/paper_grid.py` runs the paper grid under Ray Tune with MLflow
tracking and Parquet exports (docs/design.md, "Layout")."""
