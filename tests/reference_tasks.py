"""The authors' prompt files as the tests read them (tests/fixtures/synthetic_boost_tasks.json.xz),
and ages read from their sentences by hand.

The number words are spelled out here, not by `vlsm.data.prompts.age_in_words` (the code
under test) or num2words, so that a consistent mis-spelling ("fourty-five") cannot pass.
"""

from __future__ import annotations

import functools
import json
import lzma
from pathlib import Path

TASKS_BUNDLE = Path(__file__).resolve().parent / "fixtures" / "synthetic_boost_tasks.json.xz"

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}


@functools.cache
def bundled_tasks() -> dict[str, list[dict]]:
    """"camus/val.json" (and test, and sdm's) -> that file's entries, unchanged."""
    return json.loads(lzma.decompress(TASKS_BUNDLE.read_bytes()))


def age_of(words: str) -> int:
    """Age words read by hand: "eighteen" -> 18, "seventy" -> 70, "fifty-six" -> 56.

    KeyError for any other spelling.
    """
    if words in _UNITS:
        return _UNITS[words]
    tens, hyphen, unit = words.partition("-")
    if not hyphen:
        return _TENS[tens]
    if not 1 <= _UNITS[unit] <= 9:
        raise KeyError(words)
    return _TENS[tens] + _UNITS[unit]
