"""Caches on shared storage: published once by the driver, fetched once per node by trials.
A file:// URI stands in for s3:// (the same pyarrow filesystem code path)."""

from __future__ import annotations

import numpy as np

from vlsm.data import remote_cache
from vlsm.data.cache import open_split, prepare_dataset
from vlsm.data.phantom import write_demo_data


def test_publish_then_localize_gives_the_same_cache(tmp_path, monkeypatch) -> None:
    demo = write_demo_data(tmp_path / "demo", seed=0, n_patients=3, n_test=1, n_val=1, size=(48, 40))
    folder = prepare_dataset("camus", demo.camus_root, 32, tmp_path / "cache", n_val=1, progress=False)["test"]
    storage = (tmp_path / "bucket").as_uri()  # file:///.../bucket
    uri = remote_cache.publish(folder, storage)
    assert uri == f"{storage}/cache/{folder.name}" and remote_cache.publish(folder, storage) == uri

    monkeypatch.setattr(remote_cache, "LOCAL_ROOT", tmp_path / "node")
    local = remote_cache.localize(uri)
    assert local == tmp_path / "node" / folder.name
    a, b = open_split(folder), open_split(local)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.eval_labels, b.eval_labels)
    assert [i.prompts for i in a.items] == [i.prompts for i in b.items]
    assert remote_cache.localize(uri) == local  # downloaded once
    assert remote_cache.localize(folder) == folder  # local paths pass through
