"""vlsm.atomic.atomic_folder: a folder is whole at its target or not there at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlsm.atomic import atomic_folder


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="half way"), atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not target.exists()
        raise RuntimeError("half way")
    assert _names(tmp_path) == []
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("a")
    assert _names(tmp_path) == ["out"] and _names(target) == ["a.txt"]


def test_replace_swaps_the_old_folder_out_and_hands_it_to_remove_old(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    handed: list[list[str]] = []

    def remove_old(folder: Path) -> None:
        handed.append(_names(folder))
        (folder / "old.txt").unlink()
        folder.rmdir()

    with atomic_folder(target, replace=True, remove_old=remove_old) as tmp:
        (tmp / "new.txt").write_text("new")
    assert handed == [["old.txt"]] and _names(target) == ["new.txt"] and _names(tmp_path) == ["out"]


def test_without_replace_a_folder_finished_meanwhile_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        (tmp / "ours.txt").write_text("ours")
        target.mkdir()
        (target / "theirs.txt").write_text("theirs")  # another process renamed first
    assert _names(target) == ["theirs.txt"] and _names(tmp_path) == ["out"]
