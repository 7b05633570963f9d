"""Dataset validation: each defect is reported with its file; clean data has none."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from vlsm.data.io import read_label_map, write_itk, write_png
from vlsm.data.phantom import write_demo_data
from vlsm.data.problems import ERROR, WARNING, Problem, has_errors
from vlsm.data.records import EchoImage
from vlsm.data.validate import validate_camus, validate_data
from vlsm.data.validate_synthetic import validate_sdm

SIZE = (64, 56)
P1 = "patient0001"  # val; patient0002 trains, patient0003 is the test patient


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """Tiny clean phantom sets (3 patients, 1 SDM image each), written once."""
    base = tmp_path_factory.mktemp("pristine")
    out = {}
    for release in ("2023", "2019"):
        demo = write_demo_data(
            base / release,
            seed=0,
            n_patients=3,
            n_test=1,
            n_val=1,
            size=SIZE,
            release=release,
            sdm_per_image=1,
        )
        out[release] = demo.camus_root
    out["sdm"] = demo.sdm_root
    return out


@pytest.fixture
def camus(pristine, tmp_path) -> Path:
    """A private copy of the 2023 CAMUS set to damage."""
    return Path(shutil.copytree(pristine["2023"], tmp_path / "camus"))


@pytest.fixture
def sdm(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine["sdm"], tmp_path / "sdm"))


def _pdir(camus: Path, patient: str = P1) -> Path:
    return camus / "database_nifti" / patient


def _errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == ERROR]


def _only_error(problems: list[Problem]) -> Problem:
    errors = _errors(problems)
    assert len(errors) == 1, [str(p) for p in problems]
    return errors[0]


def _label(path: Path) -> np.ndarray:
    rec = EchoImage("camus2023", P1, "2CH", "ED", "val", path, (path,))
    return read_label_map(rec)


def test_clean_data_has_no_problems(pristine):
    assert validate_data(pristine["2023"], pristine["sdm"], n_val=1, progress=False) == []
    assert validate_camus(pristine["2019"], n_val=1, progress=False) == []


def test_image_without_mask(camus):
    image = _pdir(camus) / f"{P1}_2CH_ES.nii.gz"
    (_pdir(camus) / f"{P1}_2CH_ES_gt.nii.gz").unlink()
    problem = _only_error(validate_camus(camus, n_val=1, progress=False))
    assert problem.path == image and "image without mask" in problem.message
    assert f"{P1}_2CH_ES_gt.nii.gz" in problem.message


def test_mask_without_image(camus):
    mask = _pdir(camus) / f"{P1}_4CH_ED_gt.nii.gz"
    (_pdir(camus) / f"{P1}_4CH_ED.nii.gz").unlink()
    problem = _only_error(validate_camus(camus, n_val=1, progress=False))
    assert problem.path == mask and "mask without image" in problem.message


def test_missing_info_cfg(camus):
    cfg = _pdir(camus) / "Info_4CH.cfg"
    cfg.unlink()
    problem = _only_error(validate_camus(camus, n_val=1, progress=False))
    assert problem.path == cfg and "CAMUS info file not found" in problem.message


def test_corrupt_image(camus):
    image = _pdir(camus) / f"{P1}_2CH_ED.nii.gz"
    image.write_bytes(b"this is not a NIfTI file")
    problem = _only_error(validate_camus(camus, n_val=1, progress=False))
    assert problem.path == image and "unreadable image" in problem.message


def test_image_mask_size_mismatch(camus):
    mask = _pdir(camus) / f"{P1}_2CH_ED_gt.nii.gz"
    bigger = np.pad(_label(mask), ((0, 4), (0, 0)))  # (68, 56)
    write_itk(mask, bigger)
    problem = _only_error(validate_camus(camus, n_val=1, progress=False))
    assert problem.path == mask and "differs from its image" in problem.message
    assert "68 x 56" in problem.message and "64 x 56" in problem.message


def test_unknown_label_values(camus):
    mask = _pdir(camus) / f"{P1}_4CH_ES_gt.nii.gz"
    labels = _label(mask)
    labels[0, 0] = 7
    write_itk(mask, labels)
    problem = _only_error(validate_camus(camus, n_val=1, progress=False))
    assert problem.path == mask and "unknown label value(s) [7]" in problem.message


def test_structure_absent_from_mask(camus):
    mask = _pdir(camus) / f"{P1}_2CH_ES_gt.nii.gz"
    labels = _label(mask)
    labels[labels == 3] = 0
    write_itk(mask, labels)
    problem = _only_error(validate_camus(camus, n_val=1, progress=False))
    assert problem.path == mask and "LA (3) absent" in problem.message


def test_malformed_cfg_reports_every_field(camus):
    cfg = _pdir(camus) / "Info_2CH.cfg"
    cfg.write_text("ED: 1\nES: 99\nNbFrame: 20\nSex: X\nAge: old\nthis line is broken\n")
    problems = validate_camus(camus, n_val=1, progress=False)
    messages = [p.message for p in _errors(problems)]
    assert all(p.path == cfg for p in _errors(problems))
    assert any("Sex must be one of" in m and "'X'" in m for m in messages)
    assert any("Age must be a whole number" in m for m in messages)
    assert any("line 6: expected a `Key: value` line" in m for m in messages)
    assert any("missing field ImageQuality" in m for m in messages)
    assert any("ES frame 99 is beyond NbFrame 20" in m for m in messages)
    assert len(messages) == 5


def test_patient_in_two_splits(camus):
    training = camus / "database_split" / "subgroup_training.txt"
    training.write_text(training.read_text() + "patient0003\n")  # also a test patient
    problems = _errors(validate_camus(camus, n_val=1, progress=False))
    assert len(problems) == 1
    assert "patient0003 is in two splits" in problems[0].message
    assert problems[0].path.name in ("subgroup_training.txt", "subgroup_testing.txt")


def test_split_file_problems(camus):
    (camus / "database_split" / "subgroup_testing.txt").unlink()
    validation = camus / "database_split" / "subgroup_validation.txt"
    validation.write_text("patient0001\npatient9999\nnot-a-patient\n")
    messages = {(p.path.name, p.message) for p in _errors(validate_camus(camus, n_val=1, progress=False))}
    assert (
        "subgroup_testing.txt",
        "split file missing (the test patients of every split scheme)",
    ) in messages
    assert (
        "subgroup_validation.txt",
        "patient9999 is listed but has no patient folder",
    ) in messages
    assert any(n == "subgroup_validation.txt" and "line 3" in m for n, m in messages)


def test_every_problem_is_reported_not_just_the_first(camus):
    (_pdir(camus) / f"{P1}_2CH_ES_gt.nii.gz").unlink()
    (_pdir(camus, "patient0002") / "Info_2CH.cfg").unlink()
    (_pdir(camus, "patient0003") / "patient0003_4CH_ED.nii.gz").write_bytes(b"junk")
    paths = {p.path.name for p in _errors(validate_camus(camus, n_val=1, progress=False))}
    assert paths == {f"{P1}_2CH_ES.nii.gz", "Info_2CH.cfg", "patient0003_4CH_ED.nii.gz"}


def test_camus_2019_missing_raw_and_unlabelled_test_patients(pristine, tmp_path):
    root = Path(shutil.copytree(pristine["2019"], tmp_path / "c2019"))
    test_patient = next((root / "testing").iterdir())
    for gt in test_patient.glob("*_gt.*"):
        gt.unlink()  # the 2019 test set came without ground truth: fine
    assert validate_camus(root, n_val=1, progress=False) == []
    header = root / "training" / P1 / f"{P1}_4CH_ES.mhd"
    header.with_suffix(".raw").unlink()
    problem = _only_error(validate_camus(root, n_val=1, progress=False))
    assert problem.path == header and "unreadable image" in problem.message


def test_not_a_camus_folder(tmp_path):
    problem = _only_error(validate_camus(tmp_path, n_val=1, progress=False))
    assert problem.path == tmp_path and "database_nifti" in problem.message


def _sdm_pair(sdm: Path, name: str = "patient0002_2CH_ED_training_0.png") -> tuple[Path, Path]:
    folder = sdm / "2CH_ED"
    return folder / "images" / "training" / name, folder / "annotations" / "training" / name


def test_sdm_image_without_label_and_label_without_image(sdm):
    image, label = _sdm_pair(sdm)
    label.unlink()
    image2, label2 = _sdm_pair(sdm, "patient0001_2CH_ED_validation_0.png")
    image2 = image2.parent.parent / "validation" / image2.name
    label2 = label2.parent.parent / "validation" / label2.name
    image2.unlink()
    problems = _errors(validate_sdm(sdm, progress=False))
    found = {(p.path, p.message.split(" (")[0]) for p in problems}
    assert found == {(image, "image without label map"), (label2, "label map without image")}


def test_sdm_unknown_values_corrupt_png_absent_structure_and_size(sdm):
    _, bad_values = _sdm_pair(sdm)
    write_png(bad_values, np.full((64, 64), 9, np.uint8))
    corrupt, _ = _sdm_pair(sdm, "patient0002_2CH_ES_training_0.png")
    corrupt = sdm / "2CH_ES" / "images" / "training" / corrupt.name
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    no_la = sdm / "4CH_ED" / "annotations" / "training" / "patient0002_4CH_ED_training_0.png"
    rec = EchoImage("sdm", "patient0002", "4CH", "ED", "train", no_la, (no_la,), variant=0)
    labels = read_label_map(rec)
    labels[labels == 3] = 0
    write_png(no_la, labels)
    small = sdm / "4CH_ES" / "annotations" / "training" / "patient0002_4CH_ES_training_0.png"
    rec = EchoImage("sdm", "patient0002", "4CH", "ES", "train", small, (small,), variant=0)
    write_png(small, read_label_map(rec)[:60])
    by_path = {p.path: p.message for p in _errors(validate_sdm(sdm, progress=False))}
    assert "unknown label value(s) [9]" in by_path.pop(bad_values)
    assert "unreadable image" in by_path.pop(corrupt)
    assert "LA (3) absent" in by_path.pop(no_la)
    assert "differs from its image" in by_path.pop(small)
    assert by_path == {}


def test_sdm_of_a_test_patient_is_a_warning(pristine, sdm):
    image, label = _sdm_pair(sdm)
    for path in (image, label):
        shutil.copy(path, path.with_name(path.name.replace("patient0002", "patient0003")))
    problems = validate_data(pristine["2023"], sdm, n_val=1, progress=False)
    assert not has_errors(problems)
    assert [p.severity for p in problems] == [WARNING]
    assert "patient0003, a CAMUS test patient" in problems[0].message


def test_validate_data_needs_a_root():
    with pytest.raises(ValueError, match="give camus_root, sdm_root or both"):
        validate_data(None, None)


def test_problem_rejects_unknown_severity():
    with pytest.raises(ValueError, match="severity"):
        Problem(Path("x"), "m", "fatal")


def test_cli_exit_codes_and_output(pristine, camus, capsys):
    from vlsm.cli import main

    assert (
        main(
            [
                "validate-data",
                "--camus-root",
                str(pristine["2023"]),
                "--sdm-root",
                str(pristine["sdm"]),
                "--n-val",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines()[-1].startswith("OK: 0 error(s), 0 warning(s)")
    mask = _pdir(camus) / f"{P1}_2CH_ES_gt.nii.gz"
    mask.unlink()
    assert main(["validate-data", "--camus-root", str(camus), "--n-val", "1", "--no-progress"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0]
        == f"{mask.with_name(f'{P1}_2CH_ES.nii.gz')}: image without mask: {mask.name} is missing"
    )
    assert lines[-1].startswith("FAILED: 1 error(s)")
    assert main(["validate-data"]) == 2


def _two_test_patients_2019(tmp_path_factory) -> Path:
    demo = write_demo_data(
        tmp_path_factory.mktemp("c2019") / "demo", seed=1, n_patients=4, n_test=2, n_val=1,
        size=SIZE, release="2019", sdm_per_image=1,
    )
    return Path(demo.camus_root)


def test_camus_2019_partial_test_ground_truth_is_an_error(tmp_path_factory, tmp_path):
    """One missing _gt of a test patient would shrink the test set without a word."""
    from vlsm.data.cache import prepare_dataset

    root = _two_test_patients_2019(tmp_path_factory)
    assert validate_camus(root, n_val=1, progress=False) == []
    gt = root / "testing" / "patient0002" / "patient0002_2CH_ED_gt.mhd"
    gt.unlink()
    gt.with_suffix(".raw").unlink()
    problem = _only_error(validate_camus(root, n_val=1, progress=False))
    assert problem.path == gt.with_name("patient0002_2CH_ED.mhd")
    assert "image without mask" in problem.message and gt.name in problem.message
    # the sweep's data phase refuses too: the reader no longer drops the image
    with pytest.raises(ValueError, match=r"patient0002_2CH_ED_gt\.mhd"):
        prepare_dataset("camus", root, 32, tmp_path / "cache", n_val=1, progress=False, workers=1)


def test_truncated_files_are_errors_with_sizes(camus, pristine, tmp_path):
    image = _pdir(camus) / f"{P1}_2CH_ED.nii.gz"
    image.write_bytes(image.read_bytes()[:-40])  # the gzip stream ends early
    mask = _pdir(camus, "patient0002") / "patient0002_4CH_ES_gt.nii.gz"
    import gzip

    mask.write_bytes(gzip.compress(gzip.decompress(mask.read_bytes())[:-10]))
    by_path = {p.path: p.message for p in _errors(validate_camus(camus, n_val=1, progress=False))}
    assert set(by_path) == {image, mask}, by_path
    assert "truncated" in by_path[image] and "expected" in by_path[image]
    assert "expected at least 3936 bytes" in by_path[mask] and "found 3926" in by_path[mask]
    # nothing zero-filled reaches a cache
    from vlsm.data.cache import prepare_dataset

    with pytest.raises(ValueError, match=r"patient000[12]_.*\.nii\.gz: truncated"):
        prepare_dataset("camus", camus, 32, tmp_path / "cache", n_val=1, progress=False, workers=1)

    root = Path(shutil.copytree(pristine["2019"], tmp_path / "c2019"))
    raw = root / "training" / P1 / f"{P1}_4CH_ES_gt.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    problem = _only_error(validate_camus(root, n_val=1, progress=False))
    assert problem.path == raw
    assert f"expected {SIZE[0] * SIZE[1]} bytes" in problem.message and "found 100" in problem.message



def test_an_empty_split_is_an_error_worded_for_what_happened(pristine, capsys) -> None:
    from vlsm.cli import main

    # 3 patients, 1 for test: with the paper's 50 validation patients nothing trains
    problem = _only_error(validate_camus(pristine["2023"], progress=False))
    assert "the paper split leaves no train images: of the 2 patients outside the test set the first 50" \
        in problem.message and "data.val_patients" in problem.message
    assert main(["validate-data", "--camus-root", str(pristine["2023"]), "--no-progress"]) == 1
    assert main(["validate-data", "--camus-root", str(pristine["2023"]), "--n-val", "1", "--no-progress"]) == 0
    capsys.readouterr()
    from vlsm.data.cache import prepare_dataset

    with pytest.raises(ValueError, match="the paper split leaves no train images"):
        prepare_dataset("camus", pristine["2023"], 32, pristine["2023"].parent / "cache", progress=False)
