"""Prompts P0-P7 for one (image, structure), worded exactly as the Synthetic Boost authors'.

Why a module of its own: the prompt is a grid axis, so the sentences must be
reproducible character for character (the tests compare them with the authors'
published task files, `reference/synthetic-boost/tasks/`), and training and evaluation
must agree on which phrasing is used.

The prompts are cumulative; each has two phrasings that differ only in the
"of the heart" / "in the cardiac ultrasound" part. For the left ventricle of a
two-chamber end-diastole image of a 56-year-old woman with good image quality:

    P0  ""
    P1  "Left ventricular cavity of the heart."
    P2  "Left ventricular cavity in two-chamber view of the heart."
    P3  "... in two-chamber view of the heart at end of the diastole cycle."
    P4  "... at end of the diastole cycle of a female."
    P5  "... at end of the diastole cycle of a fifty-six-year-old female."
    P6  "... of a fifty-six-year-old female with good image quality."
    P7  "Left ventricular cavity of oval shape in two-chamber view of the heart ... quality."

The second phrasing puts "in the cardiac ultrasound" where the first has "of the heart".
Synthetic (SDM) images have no image-quality attribute: their P6 is P5 with
"of <shape> shape" after the structure name, and they have no P7.

Images of a generative model may also carry the generator's own prompt (`EchoImage.text`,
e.g. DiffEcho's "an ultrasound image of heart in two-chamber view"); `generator_prompt`
names the structure in it: "Left ventricular cavity in an ultrasound image of heart in
two-chamber view." (the cache's prompt key "generator", `GENERATOR_PROMPT`).

Quirks kept on purpose so that sentences match the authors' files: the article is
always "a" ("of a eighty-four-year-old male"), and the shape word is used as given
(their VQA model also answered "triangular", "rectangular").
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence

from vlsm.axes import PROMPTS, STRUCTURE_NAMES, SYNTHETIC_PROMPTS
from vlsm.data.records import EchoImage

__all__ = [
    "DEFAULT_PROVENANCE_PHRASES",
    "GENERATOR_PROMPT",
    "PHRASINGS",
    "age_in_words",
    "build_prompts",
    "choose_phrasing",
    "generator_prompt",
    "prompt_key",
    "pick_phrasing",
    "prompt_keys",
    "with_provenance",
]

# Prompt key of the generator's own text, beside "p0".."p7" (see generator_prompt).
GENERATOR_PROMPT = "generator"
# The two phrasings, in the authors' order; evaluation uses the first.
PHRASINGS: tuple[str, str] = ("of the heart", "in the cardiac ultrasound")

_VIEW_WORDS = {"2CH": "two-chamber", "4CH": "four-chamber"}
_PHASE_WORDS = {"ED": "diastole", "ES": "systole"}
_SEX_WORDS = {"M": "male", "F": "female"}
_QUALITY_WORDS = {"Good": "good", "Medium": "medium", "Poor": "poor"}


def prompt_keys(synthetic: bool) -> tuple[str, ...]:
    """The prompt keys of an image: ("p0", ..., "p7"), or up to "p6" for synthetic data."""
    return tuple(prompt_key(p) for p in (SYNTHETIC_PROMPTS if synthetic else PROMPTS))


def prompt_key(prompt: str) -> str:
    """Grid value -> prompt key: "P3" -> "p3" (keys are lower case, as in the JSON files)."""
    if prompt.upper() not in PROMPTS:
        raise ValueError(f"prompt: unknown value {prompt!r}; expected one of {', '.join(PROMPTS)}")
    return prompt.lower()


def generator_prompt(structure: int, text: str) -> str:
    """The generator's text with the structure named: (1, "an ultrasound image of heart.")
    -> "Left ventricular cavity in an ultrasound image of heart." (one phrasing)."""
    if structure not in STRUCTURE_NAMES:
        raise ValueError(f"structure: got {structure!r}; expected one of {sorted(STRUCTURE_NAMES)}")
    words = text.strip().removesuffix(".").strip()
    if not words:
        raise ValueError(f"generator text: got {text!r}; expected the prompt an image was generated from")
    return f"{STRUCTURE_NAMES[structure]} in {words}."


def age_in_words(age: int) -> str:
    """56 -> "fifty-six" (num2words; spaces hyphenated so "...-year-old" stays one word)."""
    from num2words import num2words

    if isinstance(age, bool) or not isinstance(age, int) or not 0 <= age <= 150:
        raise ValueError(f"age: expected an integer number of years in 0-150, got {age!r}")
    return num2words(age).replace(",", "").replace(" ", "-")


def _field(image: EchoImage, name: str, value: object, words: Mapping[str, str], key: str) -> str:
    """The prompt word for a metadata value; ValueError naming image, field and prompt."""
    if value is None:
        raise ValueError(
            f"{image.source}/{image.name} ({image.image_path}): {name} is unknown but prompt "
            f"{key} needs it; expected one of {', '.join(words)}"
        )
    if value not in words:
        raise ValueError(
            f"{image.source}/{image.name} ({image.image_path}): {name}={value!r}; "
            f"expected one of {', '.join(words)}"
        )
    return words[value]


def _verbatim(image: EchoImage, structure: int) -> dict[str, str | tuple[str, str]]:
    """The authors' own prompts carried by the record (lists become tuples)."""
    assert image.prompts is not None
    if structure not in image.prompts:
        raise ValueError(
            f"{image.source}/{image.name}: the record's prompts have no structure "
            f"{structure}; it has {sorted(image.prompts)}"
        )
    return {k: v if isinstance(v, str) else tuple(v) for k, v in image.prompts[structure].items()}


def build_prompts(
    image: EchoImage,
    structure: int,
    shape: str | None = None,
    *,
    keys: Iterable[str] | None = None,
    synthetic: bool | None = None,
) -> dict[str, str | tuple[str, str]]:
    """Prompts of one (image, structure): {"p0": "", "p1": (first, second), ...}.

    Real images get p0-p7, synthetic ones (`image.synthetic`) p0-p6. When the record
    carries the authors' prompts (`image.prompts`, their layout), those are returned
    verbatim (shape is then ignored).

    shape: "circle" | "oval" | ... (`vlsm.data.shapes.classify_shape`), needed for p7
      (real) or p6 (synthetic).
    keys: build only these prompts (default: all of the image's); metadata is required
      only for the prompts asked for, so P1 training works without patient ages.
    synthetic: the prompt style (default `image.synthetic`). True on a real image gives
      the prompts a model trained on synthetic data is tested with: p0-p6, p6 = shape.

    Raises ValueError naming the image and field when a needed value (shape, sex, age,
    image quality) is missing or unknown, or when a key is not one of the image's.
    """
    if structure not in STRUCTURE_NAMES:
        raise ValueError(
            f"structure: got {structure!r}; expected one of {sorted(STRUCTURE_NAMES)}"
        )
    if image.prompts is not None:
        own = _verbatim(image, structure)
        if keys is None:
            return own
        missing = [k for k in keys if k not in own]
        if missing:
            raise ValueError(
                f"{image.source}/{image.name}: the record's prompts for structure {structure} "
                f"have no {missing}; they hold {', '.join(own)}"
            )
        return {k: own[k] for k in keys}

    style = image.synthetic if synthetic is None else synthetic
    all_keys = prompt_keys(style)
    wanted = all_keys if keys is None else tuple(keys)
    unknown = [k for k in wanted if k not in all_keys]
    if unknown:
        kind = "a synthetic" if style else "a real"
        raise ValueError(
            f"keys: {unknown} are not prompts of {kind} image ({image.source}/{image.name}); "
            f"expected some of {', '.join(all_keys)}"
        )
    shape_key = all_keys[-1]  # p7 for real images, p6 for synthetic ones
    if shape_key in wanted and not shape:
        raise ValueError(
            f"{image.source}/{image.name} ({image.image_path}): prompt {shape_key} needs the "
            "structure's shape (shape=...; see vlsm.data.shapes.classify_shape), got none"
        )
    depth = max(int(k[1:]) for k in wanted) if wanted else 0
    info = image.info
    level = 6 if style else 7  # first prompt holding the shape

    # Words of each cumulative step; only the ones a wanted prompt needs are looked up.
    view = _field(image, "view", image.view, _VIEW_WORDS, "p2") if depth >= 2 else ""
    phase = _field(image, "phase", image.phase, _PHASE_WORDS, "p3") if depth >= 3 else ""
    sex = _field(image, "info.sex", info.sex, _SEX_WORDS, "p4") if depth >= 4 else ""
    age = ""
    if depth >= 5:
        if info.age is None:
            raise ValueError(
                f"{image.source}/{image.name} ({image.image_path}): info.age is unknown but "
                "prompt p5 needs it; expected an age in years"
            )
        age = age_in_words(info.age)
    quality = ""
    if depth >= 6 and not style:
        quality = _field(image, "info.image_quality", info.image_quality, _QUALITY_WORDS, "p6")

    name = STRUCTURE_NAMES[structure]
    prompts: dict[str, str | tuple[str, str]] = {}
    for key in wanted:
        n = int(key[1:])
        if n == 0:
            prompts[key] = ""
            continue
        head = name if n < level else f"{name} of {shape} shape"
        if n >= 2:
            head += f" in {view} view"
        tail = ""
        if n >= 3:
            tail += f" at end of the {phase} cycle"
        if n >= 4:
            tail += f" of a {age}-year-old {sex}" if n >= 5 else f" of a {sex}"
        if n >= 6 and not style:
            tail += f" with {quality} image quality"
        first, second = (f"{head} {where}{tail}." for where in PHRASINGS)
        prompts[key] = (first, second)
    return prompts


def choose_phrasing(
    prompts: Mapping[str, str | Sequence[str]],
    key: str,
    rng: random.Random | None,
) -> str:
    """One sentence of prompt `key`: the first phrasing when rng is None (evaluation,
    deterministic), else a phrasing drawn with rng (training). P0 is "" either way."""
    if key not in prompts:
        raise ValueError(f"prompt {key!r} not available; the prompts hold {', '.join(prompts)}")
    return pick_phrasing(prompts[key], rng, key)


def pick_phrasing(value: str | Sequence[str], rng: random.Random | None, key: str = "") -> str:
    """One sentence of a prompt value: itself when it is one sentence, else the first
    phrasing (rng None) or one drawn with rng."""
    if isinstance(value, str):
        return value
    if len(value) == 0:
        raise ValueError(f"prompt {key!r} has no phrasing; expected one or two sentences")
    return value[0] if rng is None else value[rng.randrange(len(value))]


# --- provenance: real and synthetic pairs in one training set (strategy real+synthetic) --

# What a real+synthetic trial's prompts add, by the image's provenance; set in the sweep
# as grid.provenance_phrases. "in the cardiac ultrasound" is the templates' own phrase.
DEFAULT_PROVENANCE_PHRASES: dict[str, str] = {
    "real": "in a real cardiac ultrasound",
    "synthetic": "in a synthetic cardiac ultrasound",
}
_TEMPLATE_PLACE = "in the cardiac ultrasound"


def with_provenance(text: str, synthetic: bool, phrases: Mapping[str, str]) -> str:
    """One prompt sentence saying whether its image is real or synthetic, worded as the
    templates are: the second phrasing's "in the cardiac ultrasound" becomes the phrase
    ("... in a synthetic cardiac ultrasound."), any other sentence gets it before its
    full stop ("... of the heart in a real cardiac ultrasound."), and P0's empty prompt
    becomes the phrase alone."""
    phrase = phrases["synthetic" if synthetic else "real"]
    if not text:
        return phrase
    if _TEMPLATE_PLACE in text:
        return text.replace(_TEMPLATE_PLACE, phrase, 1)
    body = text[:-1] if text.endswith(".") else text
    return f"{body} {phrase}."
