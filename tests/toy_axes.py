"""Toy registry entries, one of each axis, added from outside the package: the toy model
(tests/toy_model.py), a prompt P8, a strategy real-PT:synth-FT (pretrain on real CAMUS,
finetune on a synthetic source) and a synthetic format "toyfmt" (images/ and masks/ PNG
folders). A sweep loads them with VLSM_PLUGINS=toy_axes (tests/ on the path), as a user's
own module would be loaded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import toy_model

from vlsm.data.io import write_png
from vlsm.data.problems import Findings
from vlsm.data.prompts import PROMPT_REGISTRY, Prompt
from vlsm.data.records import EchoImage
from vlsm.data.synthetic_sources import SYNTHETIC_SOURCE_REGISTRY, SyntheticSource
from vlsm.strategies import STRATEGY_REGISTRY, SYNTHETIC, Strategy

PROMPT, STRATEGY, SOURCE = "P8", "real-PT:synth-FT", "toyfmt"
_NAME = re.compile(r"^(?P<patient>patient\d{4})_(?P<view>2CH|4CH)_(?P<phase>ED|ES)_(?P<split>train|val)_(?P<k>\d+)\.png$")


def _sentences(words) -> tuple[str, str]:
    return f"{words['structure']} seen in {words['view']} view.", f"{words['structure']} shown in {words['view']} view."


def load_toyfmt(root: Path, camus_root: Path | None, split_scheme: str, n_val: int | None) -> list[EchoImage]:
    """One record per images/<patient>_<view>_<phase>_<split>_<k>.png with its masks/ twin."""
    records = []
    for path in sorted((Path(root) / "images").glob("*.png")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"{path}: not a toyfmt image name")
        records.append(EchoImage(SOURCE, match["patient"], match["view"], match["phase"], match["split"], path,
                                 (Path(root) / "masks" / path.name,), variant=int(match["k"])))
    return records


def write_toyfmt_phantom(root: Path, images: Sequence, params: dict) -> None:
    """One synthetic image of each phantom train/val image (rng stream 6)."""
    for img in images:
        out, mask = img.render(6, 0, img.image.shape)
        name = f"{img.patient}_{img.view}_{img.phase}_{img.split}_0.png"
        write_png(Path(root) / "images" / name, out)
        write_png(Path(root) / "masks" / name, mask)


def register() -> None:
    toy_model.register()
    PROMPT_REGISTRY.register(Prompt(PROMPT, ("view",), ("view",), compose=_sentences, words=("seen in", "shown in")))
    STRATEGY_REGISTRY.register(Strategy(STRATEGY, "real-pt-synth-ft", train=SYNTHETIC, val=SYNTHETIC, stage=2,
                                        upstream="real"))
    SYNTHETIC_SOURCE_REGISTRY.register(SyntheticSource(
        name=SOURCE, description="toyfmt: images/ and masks/ PNGs named patient_view_phase_split_k",
        load=load_toyfmt, validate=lambda root, n_val, progress: Findings(),
        attributes=lambda root, with_camus: frozenset({"shape", "view", "phase"}),
        generator_text=lambda root: False, write_phantom=write_toyfmt_phantom))


register()
