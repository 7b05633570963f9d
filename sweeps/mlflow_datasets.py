"""The cache folders a trial read, as MLflow dataset inputs of its run: named
``camus-train-352``, the cache's content key as digest (docs/sweeps.md, "MLflow")."""

from __future__ import annotations

import functools
import json
from typing import Any

__all__ = ["CONTEXTS", "dataset_inputs"]

CONTEXTS: dict[str, str] = {"train_cache": "training", "val_cache": "validation", "test_cache": "testing"}
_CONTEXT_TAG = "mlflow.data.context"


@functools.lru_cache(maxsize=256)
def _meta(cache: str) -> dict[str, Any]:
    """A cache folder's meta.json (a path or a URI such as s3://...)."""
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
