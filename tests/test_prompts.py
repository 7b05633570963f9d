"""Prompts P0-P7 against the authors' published task files, character for character.

The task files are bundled in tests/fixtures/synthetic_boost_tasks.json.xz (see the
README there: CC-BY 4.0, attribution), so these tests run in any clone; one test checks
the bundle against the authors' files themselves when ../shared/reference is present.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from reference_tasks import age_of, bundled_tasks

from vlsm.axes import STRUCTURE_NAMES
from vlsm.data.prompts import age_in_words, build_prompts, pick_phrasing, prompt_keys
from vlsm.data.records import EchoImage, PatientInfo

SHARED_TASKS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "synthetic-boost" / "tasks"
TASK_FILES = ("camus/val.json", "camus/test.json", "sdm/val.json", "sdm/test.json")

# Written independently of vlsm.data.prompts: what the reference sentences say.
_NAME = re.compile(r"^(patient\d{4})_(2CH|4CH)_(ED|ES)(?:_(training|validation|testing))?(?:_(\d))?\.png$")
_LAST = re.compile(
    r"^(?P<structure>[A-Z][a-z ]+?)(?: of (?P<shape>\w+) shape)? in (?:two|four)-chamber view "
    r"of the heart at end of the (?:diastole|systole) cycle of a (?P<age>[a-z-]+)-year-old "
    r"(?P<sex>male|female)(?: with (?P<quality>good|medium|poor) image quality)?\.$"
)
_AGE = re.compile(r" of a (?P<age>[a-z-]+)-year-old ")


def _load(rel: str) -> list[dict]:
    return bundled_tasks()[rel]


def _reference_age_words() -> set[str]:
    return {m["age"] for rel in TASK_FILES for entry in _load(rel)
            for value in entry["prompts"].values() if not isinstance(value, str)
            for sentence in value for m in _AGE.finditer(sentence)}


def test_bundled_task_files() -> None:
    assert tuple(bundled_tasks()) == TASK_FILES
    # 3 entries (structures) per image: camus val and test 200 images each (50 patients x 2
    # views x 2 phases), sdm val 1,000 (5 synthetic variants each), sdm test the 200 test images
    assert [len(_load(rel)) for rel in TASK_FILES] == [600, 600, 3000, 600]
    for rel in TASK_FILES:
        keys = [f"p{i}" for i in range(7 if rel.startswith("sdm") else 8)]
        for entry in _load(rel):
            assert set(entry) == {"img_name", "mask_name", "prompts"} and list(entry["prompts"]) == keys, rel
    assert _reference_age_words() >= {"eighteen", "forty-one", "fifty", "eighty-four", "eighty-eight"}


def test_bundled_task_files_equal_the_authors() -> None:
    if not SHARED_TASKS.is_dir():
        pytest.skip(f"the authors' task files are not at {SHARED_TASKS}; the bundled copy is used")
    for rel in TASK_FILES:
        assert json.loads((SHARED_TASKS / rel).read_text(encoding="utf-8")) == _load(rel), rel


def _image_and_shape(entry: dict, synthetic: bool) -> tuple[EchoImage, int, str]:
    """The record and shape that the reference entry's sentences imply."""
    patient, view, phase, _split, variant = _NAME.match(entry["img_name"]).groups()
    structure = int(entry["mask_name"].split("/")[0].removeprefix("mask_"))
    last = entry["prompts"]["p6" if synthetic else "p7"][0]
    m = _LAST.match(last)
    assert m, last
    info = PatientInfo(
        sex={"male": "M", "female": "F"}[m["sex"]],
        age=age_of(m["age"]),
        image_quality=m["quality"].capitalize() if m["quality"] else None,
    )
    image = EchoImage(
        source="sdm" if synthetic else "camus2023",
        patient=patient,
        view=view,
        phase=phase,
        split="val",
        image_path=Path(entry["img_name"]),
        info=info,
        variant=int(variant) if variant is not None else None,
    )
    return image, structure, m["shape"]


def _as_json(prompts: dict) -> dict:
    return {k: v if isinstance(v, str) else list(v) for k, v in prompts.items()}


@pytest.mark.parametrize("rel", ["camus/val.json", "camus/test.json"])
def test_real_prompts_match_reference(rel: str) -> None:
    entries = _load(rel)
    assert len(entries) == 600
    for i, entry in enumerate(entries):
        image, structure, shape = _image_and_shape(entry, synthetic=False)
        got = _as_json(build_prompts(image, structure, shape))
        assert got == entry["prompts"], f"{rel} entry {i}"


@pytest.mark.parametrize("rel", ["sdm/val.json", "sdm/test.json"])
def test_synthetic_prompts_match_reference(rel: str) -> None:
    entries = _load(rel)
    for i, entry in enumerate(entries):
        image, structure, shape = _image_and_shape(entry, synthetic=True)
        if image.variant is None:  # sdm/test.json: real test images, worded like SDM (no P7)
            image = EchoImage(**{**image.__dict__, "source": "sdm"})
        got = _as_json(build_prompts(image, structure, shape))
        assert got == entry["prompts"], f"{rel} entry {i}"


def _image(**info) -> EchoImage:
    return EchoImage(
        source="camus2023",
        patient="patient0007",
        view="4CH",
        phase="ES",
        split="train",
        image_path=Path("patient0007_4CH_ES.nii.gz"),
        info=PatientInfo(**info),
    )


def test_known_sentence_and_keys() -> None:
    prompts = build_prompts(_image(sex="M", age=73, image_quality="Poor"), 3, "square")
    assert tuple(prompts) == prompt_keys(synthetic=False) == tuple(f"p{i}" for i in range(8))
    assert prompts["p0"] == ""
    assert prompts["p1"] == (f"{STRUCTURE_NAMES[3]} of the heart.", "Left atrium cavity in the cardiac ultrasound.")
    assert prompts["p7"][1] == (
        "Left atrium cavity of square shape in four-chamber view in the cardiac ultrasound at end "
        "of the systole cycle of a seventy-three-year-old male with poor image quality."
    )
    assert prompt_keys(synthetic=True) == tuple(f"p{i}" for i in range(7))


def test_missing_metadata_errors_name_image_and_field() -> None:
    with pytest.raises(ValueError, match=r"patient0007_4CH_ES.*info\.age"):
        build_prompts(_image(sex="F", image_quality="Good"), 1, "oval")
    with pytest.raises(ValueError, match=r"patient0007_4CH_ES.*info\.image_quality"):
        build_prompts(_image(sex="F", age=40), 1, "oval")
    with pytest.raises(ValueError, match=r"patient0007_4CH_ES.*info\.sex"):
        build_prompts(_image(age=40, image_quality="Good"), 1, "oval")
    with pytest.raises(ValueError, match=r"patient0007_4CH_ES.*p7.*shape"):
        build_prompts(_image(sex="F", age=40, image_quality="Good"), 1)
    with pytest.raises(ValueError, match=r"info\.sex='X'"):
        build_prompts(_image(sex="X", age=40, image_quality="Good"), 1, "oval")
    with pytest.raises(ValueError, match="structure"):
        build_prompts(_image(sex="F", age=40, image_quality="Good"), 4, "oval")


def test_keys_subset_needs_only_its_metadata() -> None:
    prompts = build_prompts(_image(), 2, keys=["p0", "p3"])
    assert prompts == {
        "p0": "",
        "p3": (
            "Myocardium in four-chamber view of the heart at end of the systole cycle.",
            "Myocardium in four-chamber view in the cardiac ultrasound at end of the systole cycle.",
        ),
    }
    with pytest.raises(ValueError, match="p9"):
        build_prompts(_image(), 2, keys=["p9"])


def test_synthetic_has_no_p7() -> None:
    image = EchoImage(
        source="sdm", patient="patient0001", view="2CH", phase="ED", split="train",
        image_path=Path("x.png"), info=PatientInfo(sex="F", age=56), variant=2,
    )
    prompts = build_prompts(image, 1, "circle")
    assert "p7" not in prompts
    assert prompts["p6"][0].startswith("Left ventricular cavity of circle shape in two-chamber view")
    with pytest.raises(ValueError, match="p7"):
        build_prompts(image, 1, "circle", keys=["p7"])


def test_record_prompts_returned_verbatim() -> None:
    own = {1: {"p0": "", "p1": ["A.", "B."]}}
    image = EchoImage(
        source="synthetic-boost", patient="patient0001", view="2CH", phase="ED", split="val",
        image_path=Path("x.png"), prompts=own,
    )
    assert build_prompts(image, 1) == {"p0": "", "p1": ("A.", "B.")}
    assert build_prompts(image, 1, keys=["p1"]) == {"p1": ("A.", "B.")}
    with pytest.raises(ValueError, match="p7"):
        build_prompts(image, 1, keys=["p7"])
    with pytest.raises(ValueError, match="structure 2"):
        build_prompts(image, 2)


def test_pick_phrasing() -> None:
    prompts = {"p0": "", "p1": ("first.", "second.")}
    assert pick_phrasing(prompts["p1"], None) == "first."
    assert pick_phrasing(prompts["p0"], random.Random(0)) == ""
    rng = random.Random(0)
    drawn = {pick_phrasing(prompts["p1"], rng) for _ in range(50)}
    assert drawn == {"first.", "second."}
    seq_a = [pick_phrasing(prompts["p1"], random.Random(3)) for _ in range(5)]
    seq_b = [pick_phrasing(prompts["p1"], random.Random(3)) for _ in range(5)]
    assert seq_a == seq_b
    with pytest.raises(ValueError, match="p5"):
        pick_phrasing((), None, "p5")


def test_age_in_words() -> None:
    spelled = {18: "eighteen", 40: "forty", 41: "forty-one", 45: "forty-five", 50: "fifty",
               56: "fifty-six", 70: "seventy", 84: "eighty-four", 88: "eighty-eight",
               101: "one-hundred-and-one"}
    assert {age: age_in_words(age) for age in spelled} == spelled
    with pytest.raises(ValueError, match="age"):
        age_in_words(-3)


def test_every_age_of_the_reference_is_spelled_as_the_authors_spell_it() -> None:
    words = _reference_age_words()
    assert len(words) == 39  # 39 distinct ages, from eighteen to eighty-eight
    wrong = {w: age_in_words(age_of(w)) for w in sorted(words) if age_in_words(age_of(w)) != w}
    assert wrong == {}


def test_the_article_is_always_a() -> None:
    # the authors' quirk, kept so that sentences match: "of a eighty-four-year-old"
    image = _image(sex="M", age=84, image_quality="Good")
    assert build_prompts(image, 2, "oval")["p5"][0] == (
        "Myocardium in four-chamber view of the heart at end of the systole cycle of a "
        "eighty-four-year-old male."
    )
    sentences = [s for e in _load("camus/test.json") for s in e["prompts"]["p5"]]
    assert any(" of a eighty-four-year-old " in s for s in sentences)
    assert not any(" of an " in s for s in sentences)


def test_synthetic_style_on_a_real_image_equals_the_synthetic_prompts() -> None:
    import dataclasses

    real = EchoImage(
        source="camus2023", patient="patient0001", view="4CH", phase="ES", split="test",
        image_path=Path("x.nii.gz"), info=PatientInfo(sex="M", age=55, image_quality="Good"),
    )
    synthetic = dataclasses.replace(real, source="sdm", variant=0)
    as_synthetic = build_prompts(real, 1, shape="oval", synthetic=True)
    assert as_synthetic == build_prompts(synthetic, 1, shape="oval")
    assert as_synthetic["p6"][0] == (
        "Left ventricular cavity of oval shape in four-chamber view of the heart at end of the "
        "systole cycle of a fifty-five-year-old male."
    )
    assert "p7" not in as_synthetic and "image quality" in build_prompts(real, 1, shape="oval")["p6"][0]
