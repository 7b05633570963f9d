"""Prompts P0-P7: the prompt axis as a registry, each entry naming the image attributes its
sentences hold, worded exactly as the Synthetic Boost authors' (tests compare them with
their published task files); docs/design.md, "Prompts", has the ladder.

    build_prompts(image, 1, "oval")["p2"]
    # ("Left ventricular cavity in two-chamber view of the heart.",
    #  "Left ventricular cavity in two-chamber view in the cardiac ultrasound.")
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from vlsm.axes import STRUCTURE_NAMES
from vlsm.data.records import EchoImage
from vlsm.registry import Registry

__all__ = ["ATTRIBUTES", "DEFAULT_PROVENANCE_PHRASES", "GENERATOR_PROMPT", "PHRASINGS", "PROMPT_REGISTRY", "Prompt",
           "age_in_words", "build_prompts", "buildable_prompts", "generator_prompt", "pick_phrasing", "prompt_key",
           "prompt_keys", "prompt_names", "template_sentences", "with_provenance"]

# Prompt key of the generator's own text, beside "p0".."p7" (see generator_prompt).
GENERATOR_PROMPT = "generator"
# The two phrasings, in the authors' order; evaluation uses the first.
PHRASINGS: tuple[str, str] = ("of the heart", "in the cardiac ultrasound")
# What a prompt's sentences can name about an image, in the order they are looked up.
ATTRIBUTES: tuple[str, ...] = ("shape", "view", "phase", "sex", "age", "quality")

_VIEW_WORDS = {"2CH": "two-chamber", "4CH": "four-chamber"}
_PHASE_WORDS = {"ED": "diastole", "ES": "systole"}
_SEX_WORDS = {"M": "male", "F": "female"}
_QUALITY_WORDS = {"Good": "good", "Medium": "medium", "Poor": "poor"}

Sentences = str | tuple[str, str]  # one sentence, or the two phrasings


def template_sentences(words: Mapping[str, str]) -> tuple[str, str]:
    """The authors' template over an image's words ("structure" and any of ATTRIBUTES) in both
    phrasings, e.g. "Myocardium of oval shape in two-chamber view of the heart at end of the
    diastole cycle of a fifty-six-year-old female with good image quality." (always "a")."""
    head = words["structure"]
    if "shape" in words:
        head += f" of {words['shape']} shape"
    if "view" in words:
        head += f" in {words['view']} view"
    tail = f" at end of the {words['phase']} cycle" if "phase" in words else ""
    who = " ".join(w for w in (f"{words['age']}-year-old" if "age" in words else "", words.get("sex", "")) if w)
    if who:
        tail += f" of a {who}"
    if "quality" in words:
        tail += f" with {words['quality']} image quality"
    first, second = (f"{head} {where}{tail}." for where in PHRASINGS)
    return first, second


@dataclass(frozen=True)
class Prompt:
    """One value of the prompt axis."""

    name: str  # the axis value: "P3"
    real: tuple[str, ...] | None  # the ATTRIBUTES its sentences name for a real image ...
    synthetic: tuple[str, ...] | None  # ... and in the synthetic style; None: not a prompt of it
    compose: Callable[[Mapping[str, str]], Sentences] = template_sentences  # words -> sentences
    words: tuple[str, ...] = ()  # phrases beyond the template's, for the tiny tokenizer's vocabulary

    @property
    def key(self) -> str:
        """The key in cached prompt sets and the authors' JSON files: "p3"."""
        return self.name.lower()

    def attributes(self, synthetic: bool) -> tuple[str, ...] | None:
        return self.synthetic if synthetic else self.real


PROMPT_REGISTRY: Registry[Prompt] = Registry("prompt")
_P5 = ("view", "phase", "sex", "age")  # the ladder: P2-P5 each add one
for _prompt in (
    Prompt("P0", (), (), compose=lambda words: ""),  # the empty prompt
    Prompt("P1", (), ()),  # the structure's name alone
    Prompt("P2", _P5[:1], _P5[:1]),
    Prompt("P3", _P5[:2], _P5[:2]),
    Prompt("P4", _P5[:3], _P5[:3]),
    Prompt("P5", _P5, _P5),
    Prompt("P6", (*_P5, "quality"), ("shape", *_P5)),  # synthetic images have no image quality
    Prompt("P7", ("shape", *_P5, "quality"), None),
):
    PROMPT_REGISTRY.register(_prompt)


def prompt_names(synthetic: bool = False) -> tuple[str, ...]:
    """The prompt axis ("P0", ...), or the prompts of the synthetic style (no P7)."""
    return tuple(p.name for p in PROMPT_REGISTRY if p.attributes(synthetic) is not None)


def prompt_keys(synthetic: bool) -> tuple[str, ...]:
    """The prompt keys of an image: ("p0", ..., "p7"), or up to "p6" for synthetic data."""
    return tuple(name.lower() for name in prompt_names(synthetic))


def prompt_key(prompt: str) -> str:
    """Grid value -> prompt key: "P3" -> "p3" (keys are lower case, as in the JSON files)."""
    names = prompt_names()
    if prompt.upper() not in names:
        raise ValueError(f"prompt: unknown value {prompt!r}; expected one of {', '.join(names)}")
    return prompt.lower()


def buildable_prompts(attributes: Iterable[str]) -> tuple[str, ...]:
    """The synthetic-style prompts whose attributes a source's records all have."""
    have = set(attributes)
    return tuple(p.name for p in PROMPT_REGISTRY if p.synthetic is not None and set(p.synthetic) <= have)


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


def _word(image: EchoImage, attribute: str, shape: str | None, key: str) -> str:
    """The word of one attribute of an image; ValueError naming the image, field and the
    first prompt (key) that needs it."""
    info = image.info
    if attribute == "shape":
        if not shape:
            raise ValueError(
                f"{image.source}/{image.name} ({image.image_path}): prompt {key} needs the "
                "structure's shape (shape=...; see vlsm.data.shapes.classify_shape), got none")
        return shape
    if attribute == "age":
        if info.age is None:
            raise ValueError(f"{image.source}/{image.name} ({image.image_path}): info.age is unknown but "
                             f"prompt {key} needs it; expected an age in years")
        return age_in_words(info.age)
    name, value, words = {"view": ("view", image.view, _VIEW_WORDS), "phase": ("phase", image.phase, _PHASE_WORDS),
                          "sex": ("info.sex", info.sex, _SEX_WORDS),
                          "quality": ("info.image_quality", info.image_quality, _QUALITY_WORDS)}[attribute]
    return _field(image, name, value, words, key)


def _verbatim(image: EchoImage, structure: int, keys: Iterable[str] | None) -> dict[str, Sentences]:
    """The authors' own prompts carried by the record (lists become tuples)."""
    assert image.prompts is not None
    if structure not in image.prompts:
        raise ValueError(f"{image.source}/{image.name}: the record's prompts have no structure "
                         f"{structure}; it has {sorted(image.prompts)}")
    own = {k: v if isinstance(v, str) else tuple(v) for k, v in image.prompts[structure].items()}
    if keys is None:
        return own
    missing = [k for k in keys if k not in own]
    if missing:
        raise ValueError(f"{image.source}/{image.name}: the record's prompts for structure {structure} "
                         f"have no {missing}; they hold {', '.join(own)}")
    return {k: own[k] for k in keys}


def build_prompts(
    image: EchoImage,
    structure: int,
    shape: str | None = None,
    *,
    keys: Iterable[str] | None = None,
    synthetic: bool | None = None,
) -> dict[str, Sentences]:
    """Prompts of one (image, structure): {"p0": "", "p1": (first, second), ...}, p0-p7 in the
    real style, p0-p6 in the synthetic (default `image.synthetic`); a record's own prompts
    verbatim. shape: the structure's shape word; keys: only these prompts, so only their
    metadata is needed. ValueError naming the image and field for a missing or unknown value."""
    if structure not in STRUCTURE_NAMES:
        raise ValueError(f"structure: got {structure!r}; expected one of {sorted(STRUCTURE_NAMES)}")
    if image.prompts is not None:
        return _verbatim(image, structure, keys)
    style = image.synthetic if synthetic is None else synthetic
    entries = {p.key: p for p in PROMPT_REGISTRY if p.attributes(style) is not None}
    wanted = tuple(entries) if keys is None else tuple(keys)
    unknown = [k for k in wanted if k not in entries]
    if unknown:
        raise ValueError(
            f"keys: {unknown} are not prompts of {'a synthetic' if style else 'a real'} image "
            f"({image.source}/{image.name}); expected some of {', '.join(entries)}")
    words = {"structure": STRUCTURE_NAMES[structure]}
    for attribute in ATTRIBUTES:  # each looked up once, for the first prompt that needs it
        first = next((k for k in wanted if attribute in entries[k].attributes(style)), None)
        if first is not None:
            words[attribute] = _word(image, attribute, shape, first)
    return {key: entries[key].compose({a: words[a] for a in ("structure", *entries[key].attributes(style))})
            for key in wanted}


def pick_phrasing(value: str | Sequence[str], rng: random.Random | None, key: str = "") -> str:
    """One sentence of a prompt value: itself when it is one sentence, else the first
    phrasing when rng is None (evaluation) or one drawn with rng (training)."""
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
    """A prompt sentence saying whether its image is real or synthetic (docs/design.md,
    "Prompts"); P0's empty prompt becomes the phrase alone."""
    phrase = phrases["synthetic" if synthetic else "real"]
    if not text:
        return phrase
    if _TEMPLATE_PLACE in text:
        return text.replace(_TEMPLATE_PLACE, phrase, 1)
    body = text[:-1] if text.endswith(".") else text
    return f"{body} {phrase}."
