"""The study's axes beyond the paper's four: seeds, synthetic sources, real+synthetic with
provenance; how the grid expands them, what the plan says, and what a trial is given."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
import torch

from sweeps.cell import Cell
from sweeps.grid import expand_grid, plan_grid
from sweeps.plan import dataset_sizes, format_plan
from sweeps.spec import SpecError, load_spec
from vlsm.axes import STRATEGY_FINETUNE, STRATEGY_MIXED, STRATEGY_SYNTHETIC
from vlsm.data.prompts import DEFAULT_PROVENANCE_PHRASES, prompt_names, with_provenance
from vlsm.trial_data import mixed_epoch_order

DIFFECHO_PROMPTS = {"sdm": prompt_names()[:7], "diffecho": prompt_names()[:4]}


def test_seeds_make_one_trial_per_cell_and_seed_and_chain_within_a_seed() -> None:
    spec = load_spec(overrides=["grid.seeds=[42, 43, 44]"])
    cells = expand_grid(spec)
    assert len(cells) == 3 * 92 and len({c.cell_id for c in cells}) == 3 * 92
    assert Counter(c.seed for c in cells) == {42: 92, 43: 92, 44: 92}
    by_id = {c.cell_id: c for c in cells}
    for cell in cells:
        if cell.strategy == STRATEGY_FINETUNE:
            assert by_id[cell.upstream].seed == cell.seed
    assert "cris-real-unfrozen-p2-s43" in by_id and "cris-real-unfrozen-p2" in by_id  # 42 keeps the paper's id


def test_two_sources_make_synthetic_and_finetune_cells_each_and_share_the_real_ones() -> None:
    spec = load_spec(overrides=["grid.synthetic_sources=[sdm, diffecho]", "data.demo=true"])
    cells, skipped = plan_grid(spec, DIFFECHO_PROMPTS)
    counts = Counter((c.strategy, c.synthetic_source) for c in cells)
    assert counts[("real", "")] == 32
    assert counts[(STRATEGY_SYNTHETIC, "sdm")] == 28 and counts[(STRATEGY_FINETUNE, "sdm")] == 32
    # DiffEcho has no sex or age: synthetic P0-P3, and finetunes only where their upstream exists
    assert counts[(STRATEGY_SYNTHETIC, "diffecho")] == 16 and counts[(STRATEGY_FINETUNE, "diffecho")] == 16
    by_id = {c.cell_id: c for c in cells}
    finetune = by_id["clipseg-synth-pt-real-ft-diffecho-frozen-p3"]
    assert finetune.upstream == "clipseg-synthetic-diffecho-frozen-p3"
    assert "diffecho builds prompts P0, P1, P2, P3 only" in skipped["cris-synthetic-diffecho-frozen-p5"]
    assert "its upstream cris-synthetic-diffecho-frozen-p6 cannot run" in skipped["cris-synth-pt-real-ft-diffecho-frozen-p7"]
    plan = format_plan(spec, cells, dataset_sizes(spec, None), use_gpu=True, skipped=skipped)
    assert "skipped cris-synthetic-diffecho-frozen-p5: diffecho builds prompts" in plan
    assert f"{len(cells)} trials, 48 chained, {len(skipped)} skipped" in plan


def test_real_plus_synthetic_runs_with_and_without_provenance() -> None:
    spec = load_spec(overrides=[f"grid.strategies=[real, '{STRATEGY_MIXED}']", "grid.provenance=[prompt, none]",
                                "grid.models=[CRIS]", "grid.encoders=[frozen]"])
    cells = expand_grid(spec)
    mixed = [c for c in cells if c.strategy == STRATEGY_MIXED]
    assert len(mixed) == 2 * 7  # P0-P6 (the synthetic style), twice
    assert Counter(c.provenance for c in mixed) == {"prompt": 7, "none": 7}
    assert {c.train_data for c in mixed} == {"camus+sdm"}


def test_trial_configs_carry_seed_caches_share_and_phrases() -> None:
    from sweeps.trials import trial_config

    spec = load_spec(demo=True, overrides=["train.synthetic_share=0.25"])
    caches = {name: {m: {s: f"/{name}/{m}/{s}" for s in ("train", "val", "test")} for m in ("CLIPSeg", "CRIS")}
              for name in ("camus", "sdm", "camus+sdm")}
    mixed = trial_config(spec, Cell("CRIS", STRATEGY_MIXED, "frozen", "P2", seed=7), caches)
    assert (mixed["seed"], mixed["synthetic_share"]) == (7, 0.25)
    assert (mixed["train_cache"], mixed["val_cache"], mixed["test_cache"]) == (
        "/camus+sdm/CRIS/train", "/camus/CRIS/val", "/camus/CRIS/test")
    assert mixed["provenance_phrases"] == DEFAULT_PROVENANCE_PHRASES
    bare = trial_config(spec, Cell("CRIS", STRATEGY_MIXED, "frozen", "P2", provenance="none"), caches)
    assert bare["provenance_phrases"] is None
    synthetic = trial_config(spec, Cell("CRIS", STRATEGY_SYNTHETIC, "frozen", "P2"), caches)
    assert (synthetic["train_cache"], synthetic["val_cache"]) == ("/sdm/CRIS/train", "/sdm/CRIS/val")
    assert synthetic["synthetic_share"] is None and synthetic["seed"] == 42  # a share only where both kinds are


@pytest.mark.parametrize(("override", "message"), [
    ("grid.seeds=[1, 1]", "grid.seeds: expected each value once, got (1, 1)"),
    ("grid.seeds=[]", "grid.seeds: expected one value or more"),
    ("grid.seeds=[1, -1]", "grid.seeds[1]: expected a finite value >= 0, got -1"),
    ("train.seed=3", "train.seed: a trial's seed is the grid axis grid.seeds"),
    ("grid.synthetic_sources=[gan]", "grid.synthetic_sources[0]: expected one of ['sdm', 'diffecho', 'imagefolder'"),
    ("grid.synthetic_sources=[sdm, sdm]", "grid.synthetic_sources: expected each value once"),
    ("grid.provenance=[maybe]", "grid.provenance[0]: expected one of ['prompt', 'none'], got 'maybe'"),
    ("grid.provenance=[]", "grid.provenance: expected one value or more"),
    ("grid.provenance_phrases.real=' '", "grid.provenance_phrases: expected {real: <phrase>, synthetic: <phrase>}"),
    ("data.synthetic_format=png", "data.synthetic_format: expected one of ['sdm', 'diffecho', 'imagefolder'"),
    ("train.synthetic_share=1.5", "synthetic_share: expected 0 < value < 1, got 1.5"),
    ("train.prompt_source=llm", "prompt_source: expected one of ['template', 'generator'], got 'llm'"),
])
def test_study_settings_are_checked_before_anything_runs(override: str, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        load_spec(demo=True, overrides=[override])


def test_a_source_named_in_the_grid_needs_its_folder() -> None:
    with pytest.raises(SpecError, match="has 'diffecho' but no folder is configured for it; give --synthetic-root"):
        load_spec(values={"data.camus_root": "/c", "data.sdm_root": "/s", "grid.synthetic_sources": ["sdm", "diffecho"]})


def test_provenance_is_worded_as_the_templates() -> None:
    phrases = DEFAULT_PROVENANCE_PHRASES
    assert with_provenance("Left ventricular cavity of the heart.", False, phrases) == (
        "Left ventricular cavity of the heart in a real cardiac ultrasound.")
    assert with_provenance("Left ventricular cavity in the cardiac ultrasound.", True, phrases) == (
        "Left ventricular cavity in a synthetic cardiac ultrasound.")
    assert with_provenance("", True, phrases) == "in a synthetic cardiac ultrasound"


def test_an_epoch_holds_every_real_pair_and_the_synthetic_share() -> None:
    synthetic = torch.tensor([False] * 30 + [True] * 100)
    order = mixed_epoch_order(synthetic, 0.25, seed=3, epoch=2)
    assert sorted(order[~synthetic[order]].tolist()) == list(range(30))  # each real pair once
    assert int(synthetic[order].sum()) == 10 and len(set(order.tolist())) == 40  # 10 / 40 = 25 %, no repeats
    assert torch.equal(order, mixed_epoch_order(synthetic, 0.25, seed=3, epoch=2))  # a function of (seed, epoch)
    assert not torch.equal(order, mixed_epoch_order(synthetic, 0.25, seed=3, epoch=3))
    many = mixed_epoch_order(synthetic, 0.9, seed=3, epoch=2)  # more than there are: drawn with replacement
    assert int(synthetic[many].sum()) == 270
    assert torch.equal(mixed_epoch_order(synthetic, None, 3, 2).sort().values, torch.arange(130))
    with pytest.raises(ValueError, match="needs both"):
        mixed_epoch_order(torch.ones(5, dtype=torch.bool), 0.5, 0, 1)


def test_prompt_table_words_provenance_and_uses_generator_text() -> None:
    from vlsm.data.cache import CacheItem
    from vlsm.trial_data import PromptTable

    real = CacheItem(0, 1, "a_LV", {"p1": ("LV of the heart.", "LV in the cardiac ultrasound.")})
    fake = CacheItem(1, 1, "b_LV", {"p1": ("LV of the heart.", "LV in the cardiac ultrasound."),
                                    "generator": "LV in an ultrasound image of heart in two-chamber view."},
                     synthetic=True)

    class Split:
        root, items = "cache", [real, fake]

    def tokenizer(texts):
        return {"input_ids": [[i] for i in range(len(texts))], "attention_mask": [[1]] * len(texts)}

    table = PromptTable([Split], "p1", tokenizer, torch.device("cpu"), generator=True,
                        provenance=DEFAULT_PROVENANCE_PHRASES)
    assert [table.texts[r] for r in table.choose([real, fake], None)] == [
        "LV of the heart in a real cardiac ultrasound.",
        "LV in an ultrasound image of heart in two-chamber view in a synthetic cardiac ultrasound."]
    rows = {table.texts[int(table.choose([real], random.Random(i))[0])] for i in range(20)}
    assert rows == {"LV of the heart in a real cardiac ultrasound.", "LV in a real cardiac ultrasound."}
    plain = PromptTable([Split], "p1", tokenizer, torch.device("cpu"))
    assert [plain.texts[r] for r in plain.choose([real, fake], None)] == ["LV of the heart.", "LV of the heart."]


def test_generator_prompts_need_a_source_with_generator_text() -> None:
    from sweeps.options import UsageError, _check_prompt_source

    with pytest.raises(UsageError, match="none of the grid's synthetic sources \\['sdm'\\] carries"):
        _check_prompt_source(load_spec(demo=True, overrides=["train.prompt_source=generator"]))
    _check_prompt_source(load_spec(demo=True, overrides=["train.prompt_source=generator",
                                                         "grid.synthetic_sources=[sdm, diffecho]"]))
