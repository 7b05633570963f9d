"""Caches on shared storage: published once by the driver, fetched once per node by trials.
A file:// URI stands in for s3:// (the same pyarrow filesystem code path)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

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


class _Killed(BaseException):
    """A node dying: nothing after this point runs (not an Exception, so no cleanup catches it)."""


def _dies_halfway_through(name: str, monkeypatch, *, meanwhile: tuple[str, Callable[[], None]] | None = None) -> None:
    """The next copy of the file `name` writes half its bytes, then its node dies. meanwhile
    (a file, a call): what happens elsewhere while this process copies that earlier file."""
    import shutil

    copy, done = shutil.copyfileobj, set()

    def copying(source, out, which: str) -> bool:
        if which in done or not any(str(getattr(f, "name", "")).endswith(f"/{which}") for f in (source, out)):
            return False
        done.add(which)
        return True

    def copy_then_die(source, out, length=0) -> None:
        if meanwhile is not None and copying(source, out, meanwhile[0]):
            monkeypatch.setattr(shutil, "copyfileobj", copy)  # the other node's copies run whole
            meanwhile[1]()
            monkeypatch.setattr(shutil, "copyfileobj", copy_then_die)
        elif copying(source, out, name):
            data = source.read()
            out.write(data[: len(data) // 2])
            out.flush()
            raise _Killed
        copy(source, out, length)

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_die)


@pytest.fixture
def cache_folder(tmp_path):
    demo = write_demo_data(tmp_path / "demo", seed=0, n_patients=3, n_test=1, n_val=1, size=(48, 40))
    return prepare_dataset("camus", demo.camus_root, 32, tmp_path / "cache", n_val=1, progress=False)["test"]


def _bucket_files(uri: str) -> dict[str, bytes]:
    folder = Path(uri.removeprefix("file://"))
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


def test_a_publisher_dying_midway_leaves_nothing_published(tmp_path, cache_folder, monkeypatch) -> None:
    uri = f"{(tmp_path / 'bucket').as_uri()}/cache/{cache_folder.name}"
    for dying in ("images.npy", "meta.json"):  # in a data file, then in the file that once marked it done
        with monkeypatch.context() as m:
            _dies_halfway_through(dying, m)
            with pytest.raises(_Killed):
                remote_cache.publish_folder(cache_folder, uri)
        assert not remote_cache.is_published(uri), f"killed while writing {dying}"
        monkeypatch.setattr(remote_cache, "LOCAL_ROOT", tmp_path / "node")
        with pytest.raises(FileNotFoundError, match="not wholly on the shared storage"):
            remote_cache.localize(uri)
        assert not (tmp_path / "node" / cache_folder.name).exists()  # nothing half taken
    remote_cache.publish_folder(cache_folder, uri)  # run again: the same files, whole
    assert remote_cache.is_published(uri)
    local = remote_cache.localize(uri)
    assert {p.name: p.read_bytes() for p in local.iterdir()} == {p.name: p.read_bytes() for p in cache_folder.iterdir()}


def test_a_second_publisher_dying_leaves_the_first_ones_folder_whole(tmp_path, cache_folder, monkeypatch) -> None:
    # Two nodes built the same feature store and publish it; the one that looked first dies
    # halfway through a file after the other one finished.
    uri = f"{(tmp_path / 'bucket').as_uri()}/cache/{cache_folder.name}"
    with monkeypatch.context() as m:
        # files go in name order: eval_labels.npy, images.npy, ...
        _dies_halfway_through("images.npy", m, meanwhile=("eval_labels.npy", lambda: remote_cache.publish_folder(cache_folder, uri)))
        with pytest.raises(_Killed):
            remote_cache.publish_folder(cache_folder, uri)  # the inner call is the other node's, whole
    assert remote_cache.is_published(uri)
    assert _bucket_files(uri) == {p.name: p.read_bytes() for p in cache_folder.iterdir()}
    monkeypatch.setattr(remote_cache, "LOCAL_ROOT", tmp_path / "node")
    local = remote_cache.localize(uri)
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in cache_folder.iterdir())  # no leftovers


def test_a_download_cut_off_midway_is_not_taken(tmp_path, cache_folder, monkeypatch) -> None:
    uri = remote_cache.publish(cache_folder, (tmp_path / "bucket").as_uri())
    monkeypatch.setattr(remote_cache, "LOCAL_ROOT", tmp_path / "node")
    with monkeypatch.context() as m:
        _dies_halfway_through("images.npy", m)
        with pytest.raises(_Killed):
            remote_cache.localize(uri)
    assert not (tmp_path / "node" / cache_folder.name).exists()
    local = remote_cache.localize(uri)  # the next trial on the node fetches it whole
    assert {p.name: p.read_bytes() for p in local.iterdir()} == {p.name: p.read_bytes() for p in cache_folder.iterdir()}


def test_a_short_file_under_a_manifest_is_not_published(tmp_path, cache_folder, monkeypatch) -> None:
    # An object store keeps an object whose upload failed midway, short: the sizes say so.
    uri = remote_cache.publish(cache_folder, (tmp_path / "bucket").as_uri())
    images = Path(uri.removeprefix("file://")) / "images.npy"
    images.write_bytes(images.read_bytes()[:100])
    assert not remote_cache.is_published(uri)
    monkeypatch.setattr(remote_cache, "LOCAL_ROOT", tmp_path / "node")
    with pytest.raises(FileNotFoundError, match="not wholly"):
        remote_cache.localize(uri)
