"""The CLIP-style prompt tokenizer: padding, truncation, P0, determinism, offline round trip."""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlsm.models import build_tokenizer, tiny_config
from vlsm.models.tokenizer import (
    TINY_CONTEXT_LENGTH,
    PromptTokenizer,
    _learn_merges,
    _tiny_vocab_and_merges,
    load_clip_tokenizer,
    tiny_tokenizer,
)

# The authors' task files (tests/fixtures/README.md: CC-BY 4.0, attribution).
TASKS_BUNDLE = Path(__file__).resolve().parent / "fixtures" / "synthetic_boost_tasks.json.xz"
LONGEST_REFERENCE_PROMPT = (
    "Left ventricular cavity of rectangle shape in four-chamber view in the cardiac ultrasound "
    "at end of the diastole cycle of a eighty-seven-year-old female with medium image quality."
)


@pytest.fixture(scope="module")
def tok() -> PromptTokenizer:
    return tiny_tokenizer()


def test_padding_mask_and_special_tokens(tok):
    batch = tok(["Left atrium cavity of the heart.", ""])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (2, TINY_CONTEXT_LENGTH)
    assert ids.dtype == mask.dtype == torch.int64
    # "left atrium cavity of the heart ." = 7 word tokens + bos + eos
    assert mask[0].tolist() == [1] * 9 + [0] * (TINY_CONTEXT_LENGTH - 9)
    assert ids[0, 0] == tok.bos_token_id and ids[0, 8] == tok.eos_token_id
    assert tok.hf.convert_ids_to_tokens(ids[0, 1:8].tolist()) == [
        "left</w>", "atrium</w>", "cavity</w>", "of</w>", "the</w>", "heart</w>", ".</w>",
    ]  # fmt: skip
    # P0: the empty prompt is bos + eos, both attended
    assert ids[1, :2].tolist() == [tok.bos_token_id, tok.eos_token_id]
    assert mask[1].tolist() == [1, 1] + [0] * (TINY_CONTEXT_LENGTH - 2)
    assert (ids[:, 9:] == tok.pad_token_id).all()


def test_lower_cases_and_squeezes_whitespace(tok):
    a = tok(["LEFT   Atrium cavity"])["input_ids"]
    b = tok(["left atrium cavity"])["input_ids"]
    assert torch.equal(a, b)


def test_truncation_keeps_eos_and_warns(tok, caplog):
    with caplog.at_level(logging.WARNING, logger="vlsm.models.tokenizer"):
        batch = tok(["left " * 100])
    ids, mask = batch["input_ids"][0], batch["attention_mask"][0]
    assert mask.sum() == TINY_CONTEXT_LENGTH
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert (ids[1:-1] != tok.eos_token_id).all()
    assert "truncated from 102 to 48 tokens" in caplog.text


def test_unknown_words_fall_back_to_bytes_not_to_special_ids(tok):
    batch = tok(["zebra quokka 42 ünïcode!"])
    n = int(batch["attention_mask"][0].sum())
    inner = batch["input_ids"][0, 1 : n - 1]
    assert n > 4
    assert not ({tok.bos_token_id, tok.eos_token_id} & set(inner.tolist()))


def test_rejects_a_bare_string_and_an_empty_batch(tok):
    with pytest.raises(ValueError, match="list of strings"):
        tok("left atrium")
    with pytest.raises(ValueError, match="at least one"):
        tok([])


def test_tiny_vocabulary_is_deterministic_across_processes():
    digest = hashlib.sha256(json.dumps(_tiny_vocab_and_merges()).encode()).hexdigest()
    code = (
        "import hashlib, json; from vlsm.models.tokenizer import _tiny_vocab_and_merges as f; "
        "print(hashlib.sha256(json.dumps(f()).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == digest


def test_learn_merges_breaks_ties_by_pair_not_by_insertion_order():
    from collections import Counter

    words = [("a", "b</w>"), ("c", "d</w>"), ("b", "a</w>")]
    forward = _learn_merges(Counter({w: 1 for w in words}))
    backward = _learn_merges(Counter({w: 1 for w in reversed(words)}))
    assert forward == backward == [("a", "b</w>"), ("b", "a</w>"), ("c", "d</w>")]


def test_every_reference_word_is_one_token_and_prompts_fit(tok):
    tasks = json.loads(lzma.decompress(TASKS_BUNDLE.read_bytes()))
    assert sorted(tasks) == ["camus/test.json", "camus/val.json", "sdm/test.json", "sdm/val.json"]
    prompts = set()
    for entries in tasks.values():
        for entry in entries:
            for value in entry["prompts"].values():
                prompts.update([value] if isinstance(value, str) else value)
    words = sorted({w for p in prompts for w in re.findall(r"[a-z]+|[^\sa-z]+", p.lower())})
    lengths = tok(words)["attention_mask"].sum(1) - 2  # without bos and eos
    assert {w: int(n) for w, n in zip(words, lengths, strict=True) if n != 1} == {}
    # the longest (P7) prompt: 36 words and punctuation + bos + eos
    candidates = sorted(prompts, key=len)[-50:]  # the longest prompts in characters
    longest = int(tok(candidates)["attention_mask"].sum(1).max())
    assert longest == 38 < TINY_CONTEXT_LENGTH
    assert int(tok([LONGEST_REFERENCE_PROMPT])["attention_mask"].sum()) == 38


def test_save_and_reload_through_from_pretrained(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = load_clip_tokenizer(tmp_path)
    assert loaded.max_length == tok.max_length and loaded.vocab_size == tok.vocab_size
    texts = [LONGEST_REFERENCE_PROMPT, "", "Myocardium of the heart."]
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(loaded(texts)[key], tok(texts)[key])


def test_registry_tokenizers_match_their_tiny_configs():
    cfg = tiny_config("clipseg")
    tok = build_tokenizer("clipseg", config=cfg)
    assert tok.max_length == cfg["text_config"]["max_position_embeddings"]
    assert tok.vocab_size == cfg["text_config"]["vocab_size"]
    assert tok.eos_token_id == cfg["text_config"]["eos_token_id"]
    too_small = {**cfg, "text_config": {**cfg["text_config"], "vocab_size": 100}}
    with pytest.raises(ValueError, match="do not fit the model's vocab_size 100"):
        build_tokenizer("clipseg", config=too_small)
    with pytest.raises(ValueError, match="available models"):
        build_tokenizer("unet", config=cfg)


def test_missing_tokenizer_folder_and_uncached_hub_id_fail_clearly(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no tokenizer.json"):
        build_tokenizer("clipseg", pretrained=tmp_path)
    # the hub is off in the tests: an uncached id fails at once, naming the option
    with pytest.raises(ValueError, match=r"tokenizer='vlsm-test/no-such-model': not in the local Hugging Face cache"):
        build_tokenizer("clipseg", pretrained="vlsm-test/no-such-model")
    with pytest.raises(ValueError, match="the hub is off"):
        build_tokenizer("clipseg")  # no source but CLIP's hub id: no 40 s of retries first


def test_an_unreachable_hub_fails_at_once(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ValueError, match=r"not in the local Hugging Face cache, and 127.0.0.1 cannot be reached"):
        build_tokenizer("clipseg")


def test_real_clip_tokenizer_when_cached():
    try:
        tok = load_clip_tokenizer("openai/clip-vit-base-patch32")
    except ValueError:
        pytest.skip("the real CLIP tokenizer is not in the Hugging Face cache (offline test)")
    assert tok.vocab_size == 49408 and tok.max_length == 77
    batch = tok(["", "Left atrium cavity of the heart."])
    assert batch["input_ids"][0, :2].tolist() == [49406, 49407]
    assert batch["attention_mask"].sum(1).tolist() == [2, 8]
