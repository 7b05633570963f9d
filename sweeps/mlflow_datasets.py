"""The data a trial saw, as MLflow dataset inputs of its run (the UI's "Dataset" column).

A trial reads cache folders (`vlsm.data.cache`), so a dataset here is one cache folder:
its name says dataset, split and input size (``camus-train-352``), its digest is the
cache's content key (changed pixels, metadata or preprocessing code give another digest,
so two runs on different data can be told apart), its source is the folder (or its URI
on shared storage), and its profile counts images and image-structure pairs.
"""

from __future__ import annotations

import functools
import json
from typing import Any

__all__ = ["CONTEXTS", "dataset_inputs"]

# TrainConfig field -> MLflow's context tag value
CONTEXTS: dict[str, str] = {"train_cache": "training", "val_cache": "validation", "test_cache": "testing"}
_CONTEXT_TAG = "mlflow.data.context"


@functools.lru_cache(maxsize=256)
def _meta(cache: str) -> dict[str, Any]:
    """A cache folder's meta.json (a local path or a URI such as s3://...)."""
    if "://" in cache:
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(cache)
        with fs.open_input_stream(f"{inner}/meta.json") as stream:
            return json.loads(stream.read())
    with open(f"{cache}/meta.json", encoding="utf-8") as f:
        return json.load(f)


def _dataset(cache: str) -> Any:
    from mlflow.entities import Dataset

    meta = _meta(cache)
    return Dataset(
        name=f"{meta['name']}-{meta['split']}-{meta['size']}",
        digest=str(meta["key"])[:16],
        source_type=cache.split("://")[0] if "://" in cache else "local",
        source=json.dumps({"uri": cache}),
        profile=json.dumps({"num_images": meta["n_images"], "num_pairs": meta["n_items"],
                            "format": meta.get("source")}),
    )


def dataset_inputs(config: dict[str, Any]) -> list[Any]:
    """The DatasetInputs of a trial config: its train, validation and test caches."""
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for field, context in CONTEXTS.items():
        cache = config.get(field)
        if cache:
            inputs.append(DatasetInput(_dataset(str(cache)), tags=[InputTag(_CONTEXT_TAG, context)]))
    return inputs
