"""The CLIP BPE tokenizer both models use, behind one callable: `tok(list_of_str)` ->
{"input_ids", "attention_mask"}, (B, L) int64 padded to the context length. The real one
(49408 tokens) loads from a hub id or a `save_pretrained` folder; the tiny one is learned
here, offline and deterministically, from the prompts' words, and runs through the same
`transformers.CLIPTokenizer` pipeline (docs/design.md, "Models").
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

from vlsm.axes import STRUCTURE_NAMES

if TYPE_CHECKING:
    import torch
    from transformers import CLIPTokenizer

__all__ = ["CLIP_CONTEXT_LENGTH", "CLIP_TOKENIZER_HUB_ID", "CLIP_VOCAB_SIZE", "TINY_CONTEXT_LENGTH",
           "PromptTokenizer", "load_clip_tokenizer", "tiny_tokenizer", "tiny_vocab_size"]

logger = logging.getLogger(__name__)

CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT_LENGTH = 77
# Where the real CLIP BPE comes from when a model's weights do not ship one (an OpenAI
# RN50.pt for CRIS): the same vocabulary and merges as OpenAI's bpe_simple_vocab_16e6.
CLIP_TOKENIZER_HUB_ID = "openai/clip-vit-base-patch32"
# The longest reference prompt (P7, real) is 37 tokens + bos + eos with the tiny vocabulary.
TINY_CONTEXT_LENGTH = 48

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
_WORD_END = "</w>"  # CLIP's end-of-word suffix
_MIN_VOCAB = 2 * 256 + 2  # byte symbols, byte symbols ending a word, bos, eos

# Words of the prompts beyond the structure names (docs/design.md, "Prompts"), with the shape
# adjectives of the authors' VQA answers ("rectangular", "triangular").
_PROMPT_PHRASES: tuple[str, ...] = (
    "of the heart.", "in the cardiac ultrasound.", "in two-chamber view", "in four-chamber view",
    "at end of the diastole cycle", "at end of the systole cycle", "of a male", "of a female",
    "with good image quality", "with medium image quality", "with poor image quality",
    "of circle shape", "of oval shape", "of triangle shape", "of square shape", "of rectangle shape",
    "of circular triangular rectangular shape",
)


def prompt_corpus() -> list[str]:
    """Phrases holding every word of the registered prompts: P0-P7's (ages 18-100 in words
    included), then the words a plugin's prompt entries add (`Prompt.words`)."""
    from num2words import num2words

    from vlsm.data.prompts import PROMPT_REGISTRY

    ages = [f"of a {num2words(age)}-year-old" for age in range(18, 101)]
    return [*STRUCTURE_NAMES.values(), *_PROMPT_PHRASES, *ages, *(w for p in PROMPT_REGISTRY for w in p.words)]


class PromptTokenizer:
    """Callable CLIP tokenizer: `tok(["a", "b"])` -> dict of (B, max_length) int64 tensors,
    truncated keeping bos first and eos last; `attention_mask` is 1 on bos, the words and eos
    (an empty prompt: bos + eos), 0 on padding."""

    def __init__(self, hf_tokenizer: CLIPTokenizer, max_length: int) -> None:
        if max_length < 2:
            raise ValueError(f"tokenizer max_length={max_length}: expected at least 2 (bos + eos)")
        self.hf = hf_tokenizer
        self.max_length = int(max_length)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included (49408 for CLIP)."""
        return len(self.hf)

    @property
    def bos_token_id(self) -> int:
        return int(self.hf.bos_token_id)

    @property
    def eos_token_id(self) -> int:
        return int(self.hf.eos_token_id)

    @property
    def pad_token_id(self) -> int:
        return int(self.hf.pad_token_id)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"tokenizer input: expected a list of strings, got {type(texts).__name__} {texts!r:.80}")
        texts = list(texts)
        if not texts:
            raise ValueError("tokenizer input: expected at least one string, got an empty list")
        lengths = [len(ids) for ids in self.hf(texts, verbose=False)["input_ids"]]
        for text, n in zip(texts, lengths, strict=True):
            if n > self.max_length:
                logger.warning("prompt truncated from %d to %d tokens (eos kept): %r", n, self.max_length, text)
        enc = self.hf(texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    def save_pretrained(self, path: str | Path) -> None:
        """Write the tokenizer files (`tokenizer.json`, `tokenizer_config.json`, ...) into path."""
        self.hf.model_max_length = self.max_length
        self.hf.save_pretrained(str(path))

    def __repr__(self) -> str:
        return f"PromptTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"


def load_clip_tokenizer(source: str | Path, max_length: int | None = None) -> PromptTokenizer:
    """The CLIP BPE tokenizer of a hub id or a local `save_pretrained` folder; max_length
    defaults to its `model_max_length`, or 77 where that is no real limit (1e30)."""
    from transformers import CLIPTokenizer

    local_only = False
    if not Path(source).expanduser().exists():  # a hub id: fail at once when it cannot download
        from vlsm.models.common import hub_files_only

        local_only = hub_files_only(str(source), "vocab.json", "tokenizer")
    try:
        hf = CLIPTokenizer.from_pretrained(str(source), local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise ValueError(f"pretrained={str(source)!r}: could not load a CLIP tokenizer from it (expected a hub id "
                         f"or a folder written by save_pretrained holding tokenizer.json or vocab.json + "
                         f"merges.txt; without network set HF_HUB_OFFLINE=1 and use a cached id): {err}") from err
    if len(hf) < _MIN_VOCAB:  # from_pretrained of an uncached hub id offline: an empty tokenizer
        raise ValueError(f"pretrained={str(source)!r}: no CLIP tokenizer files found there (got a vocabulary "
                         f"of {len(hf)} tokens; expected a hub id reachable or cached, or a folder with "
                         f"tokenizer.json or vocab.json + merges.txt)")
    if max_length is None:
        max_length = hf.model_max_length
        if not 2 <= max_length <= 100_000:
            max_length = CLIP_CONTEXT_LENGTH
    return PromptTokenizer(hf, max_length)


def _learn_merges(word_counts: Counter[tuple[str, ...]]) -> list[tuple[str, str]]:
    """Greedy BPE over words of byte-level symbols (the last ending in `</w>`): merge the most
    frequent adjacent pair, ties to the smallest (never hash order), until each word is one."""
    words = {word: list(word) for word in word_counts}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, symbols in words.items():
            for pair in pairwise(symbols):
                pairs[pair] += word_counts[word]
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged = best[0] + best[1]
        for symbols in words.values():
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i : i + 2] = [merged]
                i += 1


@lru_cache(maxsize=1)
def _tiny_vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer().backend_tokenizer  # the normaliser and pre-tokeniser inference uses
    word_counts: Counter[tuple[str, ...]] = Counter()
    for phrase in prompt_corpus():
        normalized = backend.normalizer.normalize_str(phrase)
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(normalized):
            word_counts[(*piece[:-1], piece[-1] + _WORD_END)] += 1
    merges = _learn_merges(word_counts)

    alphabet = sorted(ByteLevel.alphabet())  # (256,) byte-level symbols
    tokens = [*alphabet, *(symbol + _WORD_END for symbol in alphabet)]
    seen = set(tokens)
    for left, right in merges:
        if left + right not in seen:
            seen.add(left + right)
            tokens.append(left + right)
    tokens += [BOS, EOS]  # the two highest ids, as in CLIP (49406, 49407)
    return tuple((token, i) for i, token in enumerate(tokens)), tuple(merges)


def tiny_vocab_size() -> int:
    """Size of the tiny prompt vocabulary (special tokens included)."""
    return len(_tiny_vocab_and_merges()[0])


def tiny_tokenizer(max_length: int = TINY_CONTEXT_LENGTH) -> PromptTokenizer:
    """A CLIP-style BPE tokenizer over the prompt words, built offline and deterministically;
    other words tokenize into byte-level pieces, never to unknown."""
    from transformers import CLIPTokenizer

    vocab, merges = _tiny_vocab_and_merges()
    hf = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), unk_token=EOS, bos_token=BOS, eos_token=EOS,
                       pad_token=EOS, model_max_length=max_length)
    return PromptTokenizer(hf, max_length)
