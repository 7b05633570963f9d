"""A trial's best weights as an MLflow model: pyfunc files beside them in the final
checkpoint's ``best/`` (one copy; loader `vlsm.predictor`), logged as the run's ``model``
(on shared storage the run's ``vlsm.model`` tag names the folder):

    mlflow.pyfunc.load_model("runs:/<run_id>/model").predict({"image": grey, "prompt": "left ventricle"})
"""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LOADER_MODULE", "MODEL_NAME", "add_pyfunc_files", "log_model", "pyfunc_files"]

LOADER_MODULE = "vlsm.predictor"
MODEL_NAME = "model"  # runs:/<run_id>/model
MODEL_TYPE = "vlsm-segmentation"
# What the model needs to load (the loader module is this project's, installed where it runs).
_REQUIREMENTS = ("torch", "transformers", "safetensors", "numpy", "pillow")
_EXAMPLE_SIDE = 64


def _signature_and_example() -> tuple[Any, dict[str, np.ndarray]]:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    signature = ModelSignature(  # (N, H, W) grey pixels and a prompt per image -> (N, H, W) mask logits
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1), "image"),
                       TensorSpec(np.dtype(str), (-1,), "prompt")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]))
    yy, xx = np.mgrid[:_EXAMPLE_SIDE, :_EXAMPLE_SIDE]
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 18 ** 2).astype(np.uint8) * 160  # a bright disc
    example = {"image": disc[None], "prompt": np.array(["left ventricle"])}
    return signature, example


def _pins() -> list[str]:
    pins = []
    for name in _REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def pyfunc_files() -> dict[str, bytes]:
    """The files that make a best/ folder a pyfunc model (MLmodel, environment, example)."""
    import mlflow.pyfunc

    signature, example = _signature_and_example()
    quiet = logging.getLogger("mlflow.pyfunc")  # its "Validating input example" line, once a trial
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="vlsm-pyfunc-") as tmp:
            out = Path(tmp) / MODEL_NAME
            mlflow.pyfunc.save_model(str(out), loader_module=LOADER_MODULE, signature=signature,
                                     input_example=example, pip_requirements=_pins())
            return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    finally:
        quiet.setLevel(level)


def add_pyfunc_files(best: str, filesystem: Any = None) -> None:
    """Write the pyfunc files into a best/ folder, local or in a pyarrow filesystem (shared
    storage); each file complete or absent (written aside, renamed)."""
    from vlsm.atomic import atomic_path

    for name, data in pyfunc_files().items():
        if filesystem is None:
            with atomic_path(Path(best) / name) as tmp:
                tmp.write_bytes(data)
        else:
            staging = f"{best}/.{name}.tmp"
            with filesystem.open_output_stream(staging) as stream:
                stream.write(data)
            filesystem.move(staging, f"{best}/{name}")


def log_model(client: Any, experiment_id: str, run_id: str, best: Path, *, step: int,
              tags: dict[str, str]) -> str:
    """Log a local best/ folder (with its pyfunc files) as the run's model; its model id."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    model = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                       tags=tags, model_type=MODEL_TYPE)
    try:
        client.log_model_artifacts(model.model_id, str(best))
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
    return model.model_id
