"""CRIS: official state-dict layout, weight loading, the forward contract, freezing.

    .venv/bin/python -m pytest -q tests/test_cris.py

Two checks against the official CRIS.pytorch, from bundled numbers (tests/fixtures/README.md),
so neither needs the official code or ../shared:

- the full-size model's state dict has the official checkpoint's names and shapes
  (``fixtures/cris_rn50_state_dict.json``);
- a tiny model with fixed weights gives the official forward's float64 logits on fixed
  inputs (``fixtures/cris_official_golden.{json,npz}``): names and shapes alone would pass
  a wrong concatenation order or a misplaced position embedding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vlsm.models.cris import (
    CLIP_MEAN,
    CLIP_STD,
    CRIS,
    CRISConfig,
    build_cris,
    load_cris_checkpoint,
    sine_positions_2d,
    tiny_cris_config,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OFFICIAL_NAMES = FIXTURES / "cris_rn50_state_dict.json"
GOLDEN_META = FIXTURES / "cris_official_golden.json"
GOLDEN_ARRAYS = FIXTURES / "cris_official_golden.npz"
GOLDEN_ATOL = 1e-10  # float64; the observed max |diff| is in GOLDEN_META ("observed_max_abs_diff")
VOCAB = 1000  # a small vocabulary keeps the tiny model's embedding tiny
SOT, EOT = VOCAB - 2, VOCAB - 1


def tiny(**overrides) -> dict:
    return {**tiny_cris_config(), "vocab_size": VOCAB, **overrides}


def tokens(lengths: list[int], width: int, *, seed: int = 0, junk_padding: bool = False):
    """Right-padded CLIP-style prompts: SOT, words, EOT, then padding (0 or random junk)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB - 2, (len(lengths), width), generator=g)
    if not junk_padding:
        ids.zero_()
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0], ids[i, n - 1] = SOT, EOT
        ids[i, 1 : n - 1] = torch.randint(1, VOCAB - 2, (n - 2,), generator=g)
        mask[i, :n] = 1
    return ids, mask


def images(b: int, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def official_shapes() -> dict[str, list[int]]:
    return json.loads(OFFICIAL_NAMES.read_text())["state_dict"]


@pytest.fixture(scope="module")
def real_model() -> CRIS:
    return build_cris()  # ~147 M parameters: built, never run forward


# --- official layout and checkpoints --------------------------------------------------------


def test_real_config_state_dict_matches_official_names_and_shapes(real_model, official_shapes):
    ours = {k: list(v.shape) for k, v in real_model.state_dict().items()}
    assert len(official_shapes) == 662
    assert sorted(set(official_shapes) - set(ours)) == []
    assert sorted(set(ours) - set(official_shapes)) == []
    assert ours == official_shapes
    assert real_model.input_size == 416


def _fake_official_checkpoint(shapes: dict[str, list[int]], seed: int = 0) -> dict:
    """One random value per tensor, expanded (stride 0) so the file stays tiny."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn((), generator=g).expand(shape) for k, shape in shapes.items()}


def test_official_checkpoint_loads_strictly(real_model, official_shapes, tmp_path):
    fake = _fake_official_checkpoint(official_shapes)
    path = tmp_path / "cris_r50.pth"
    # the official training checkpoint: DataParallel prefix, under "state_dict"
    torch.save({"epoch": 50, "state_dict": {f"module.{k}": v for k, v in fake.items()}}, path)
    load_cris_checkpoint(real_model, path)
    loaded = real_model.state_dict()
    for name in ("backbone.visual.attnpool.connect.0.weight", "neck.norm_layer.0.running_var",
                 "decoder.layers.2.multihead_attn.in_proj_weight", "proj.txt.bias",
                 "backbone.token_embedding.weight"):
        assert torch.equal(loaded[name], fake[name].to(loaded[name].dtype)), name


@pytest.mark.parametrize("damage", ["missing", "shape"])
def test_official_checkpoint_mismatch_names_the_tensor(real_model, official_shapes, tmp_path, damage):
    fake = _fake_official_checkpoint(official_shapes)
    name = "neck.f2_cat.0.weight"
    if damage == "missing":
        del fake[name]
    else:
        fake[name] = torch.zeros(512, 1535, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": fake}, path)
    with pytest.raises(ValueError, match=r"neck\.f2_cat\.0\.weight") as info:
        load_cris_checkpoint(real_model, path)
    assert "bad.pth" in str(info.value)
    assert ("missing" if damage == "missing" else "1535") in str(info.value)


def test_checkpoint_roundtrip_via_build_cris(tmp_path):
    source = build_cris(config=tiny())
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "ckpt.pt"
    torch.save(source.state_dict(), path)
    model = build_cris(config=tiny(), checkpoint=path)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), model.state_dict().values(), strict=True))
    assert model.spec["checkpoint"] == str(path)
    with pytest.raises(ValueError, match="no such file"):
        build_cris(config=tiny(), checkpoint=tmp_path / "absent.pt")


# --- the official forward, from bundled numbers ---------------------------------------------


def golden_weights(shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, torch.Tensor]:
    """The golden fixture's float64 weights: a function of the tensor names, shapes and seed only.

    One seeded generator draws every tensor in sorted-name order, so the weights depend on
    no model's own initialisation or module order. The scales keep every stage
    non-degenerate (CLIP's init zeroes each residual branch's last BatchNorm, and fresh
    BatchNorm statistics are the identity): kernels and matrices N(0, 2 / fan_in), other
    `weight`s (norm gains) 1 + N(0, 0.2^2), running variances exp(N(0, 0.3^2)), everything
    else N(0, 0.1^2). `fixtures/make_cris_golden.py` builds the official model's weights
    with this function.
    """
    g = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        shape = tuple(int(d) for d in shapes[name])
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            weights[name] = torch.zeros(shape, dtype=torch.long)
            continue
        r = torch.randn(shape, generator=g, dtype=torch.float64)
        if leaf == "running_var":
            weights[name] = (0.3 * r).exp()
        elif len(shape) >= 2:
            weights[name] = r * math.sqrt(2 / math.prod(shape[1:]))
        elif leaf == "weight":
            weights[name] = 1 + 0.2 * r
        else:
            weights[name] = 0.1 * r
    return weights


def weights_fingerprint(weights: Mapping[str, torch.Tensor]) -> dict[str, float | int]:
    """Counts and float64 sums of a state dict: tells a changed RNG or recipe from a wrong model."""
    values = [weights[k].double().flatten() for k in sorted(weights)]
    return {
        "tensors": len(values),
        "values": sum(v.numel() for v in values),
        "sum": sum(float(v.sum()) for v in values),
        "sum_squares": sum(float((v * v).sum()) for v in values),
    }


@pytest.fixture(scope="module")
def golden() -> tuple[dict, dict[str, torch.Tensor]]:
    """The fixture's description (JSON) and its tensors (inputs, official logits)."""
    meta = json.loads(GOLDEN_META.read_text())
    with np.load(GOLDEN_ARRAYS, allow_pickle=False) as arrays:
        tensors = {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}
    return meta, tensors


def golden_model(meta: dict) -> CRIS:
    """Our CRIS with the fixture's config and weights, float64, eval mode."""
    model = build_cris(config=meta["config"])
    weights = golden_weights({k: v.shape for k, v in model.state_dict().items()},
                             meta["weights"]["seed"])
    fingerprint, expected = weights_fingerprint(weights), meta["weights"]["fingerprint"]
    assert (fingerprint["tensors"], fingerprint["values"]) == (expected["tensors"], expected["values"])
    for key in ("sum", "sum_squares"):
        assert fingerprint[key] == pytest.approx(expected[key], rel=1e-9), (
            "golden_weights no longer draws the fixture's weights (torch's RNG or the recipe "
            "changed): regenerate the fixture (tests/fixtures/README.md)"
        )
    model.double().load_state_dict(weights, strict=True)
    return model.eval()


def test_golden_inputs_follow_both_padding_rules(golden):
    """On the fixture the official rules (padding = ids == 0, end of text = ids.argmax())
    and ours (both from the attention mask) agree, so the logits must agree too."""
    _, t = golden
    ids, mask = t["input_ids"], t["attention_mask"]
    lengths = mask.sum(1)
    assert torch.equal(ids == 0, mask == 0)
    assert torch.equal(ids.argmax(1), lengths - 1)
    assert (lengths < ids.shape[1]).any() and (lengths == ids.shape[1]).any()  # padded and full
    h, w = t["pixel_values"].shape[-2:]
    assert h != w  # non-square: a swapped height and width cannot cancel out
    official = t["official_logits"]
    assert official.dtype == torch.float64 and official.shape == (ids.shape[0], 1, h, w)
    assert official.std() > 0.1 and not torch.allclose(official[0], official[1])


def test_golden_logits_match_official_cris(golden):
    """Same weights, same inputs, float64: our logits are the official CRIS.pytorch ones, both
    at the projector's 1/4 resolution and after the official evaluation's bicubic upsampling."""
    meta, t = golden
    model = golden_model(meta)
    seen: dict[str, torch.Tensor] = {}
    hook = model.proj.register_forward_hook(lambda _m, _i, out: seen.update(quarter=out))
    try:
        with torch.no_grad():
            logits = model(t["pixel_values"].double(), t["input_ids"], t["attention_mask"])
    finally:
        hook.remove()
    for name, ours, official in (
        ("1/4-resolution", seen["quarter"], t["official_logits_quarter"]),
        ("input-resolution", logits, t["official_logits"]),
    ):
        assert ours.shape == official.shape and ours.dtype == torch.float64, name
        diff = (ours - official).abs().max().item()
        assert diff <= GOLDEN_ATOL, f"{name} logits differ from the official CRIS by up to {diff:.3g}"


# --- OpenAI CLIP weights --------------------------------------------------------------------


def _clip_state(seed: int = 3) -> dict[str, torch.Tensor]:
    """What an OpenAI RN50 file holds for the tiny dims: no CRIS connect branch, fp16, metadata."""
    torch.manual_seed(seed)
    backbone = build_cris(config=tiny()).backbone
    state = {
        k: (v + torch.randn_like(v.float())).half() if v.is_floating_point() else v
        for k, v in backbone.state_dict().items()
        if not k.startswith("visual.attnpool.connect.")
    }
    state.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77),
                 vocab_size=torch.tensor(VOCAB))
    return state


def _check_backbone_loaded(model: CRIS, state: dict[str, torch.Tensor]) -> None:
    own = model.backbone.state_dict()
    for k, v in state.items():
        if k in ("input_resolution", "context_length", "vocab_size"):
            continue
        assert torch.equal(own[k], v.to(own[k].dtype)), k


def test_pretrained_clip_state_dict_file(tmp_path):
    state = _clip_state()
    path = tmp_path / "RN50_plain.pt"
    torch.save(state, path)
    model = build_cris(config=tiny(), pretrained=path)
    _check_backbone_loaded(model, state)
    assert model.spec["pretrained"] == str(path)
    # a ViT CLIP (or anything else) is refused, naming the offending tensor
    torch.save({**state, "visual.proj": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match=r"visual\.proj.*RN50"):
        build_cris(config=tiny(), pretrained=path)


def test_frozen_from_clip_weights_trains_the_fresh_connect_branch(tmp_path):
    # CLIP RN50 has no `connect` branch: frozen, it would stay random for good, so it trains
    # (conv, BatchNorm and all); with a CRIS checkpoint it is trained already and freezes.
    path = tmp_path / "RN50.pt"
    torch.save(_clip_state(), path)
    model = build_cris(config=tiny(), pretrained=path, freeze_encoder=True).train()
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("visual.attnpool.connect.") for n in trainable)
    assert model.backbone.visual.attnpool.connect[1].training
    assert not model.backbone.visual.layer1.training  # the rest keeps its BatchNorm fixed
    ckpt = tmp_path / "cris.pth"
    torch.save(build_cris(config=tiny()).state_dict(), ckpt)
    frozen = build_cris(config=tiny(), pretrained=path, checkpoint=ckpt, freeze_encoder=True)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_pretrained_clip_torchscript_archive(tmp_path):
    """OpenAI ships RN50.pt as a TorchScript archive: read its state dict."""
    state = _clip_state()
    root = _Holder()
    for key, value in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, _Holder())
            module = getattr(module, part)
        module.register_buffer(leaf, value)
    archive = tmp_path / "RN50.pt"
    torch.jit.script(root).save(str(archive))
    model = build_cris(config=tiny(), pretrained=archive)
    _check_backbone_loaded(model, state)


# --- forward contract ------------------------------------------------------------------------


def test_tiny_forward_contract():
    model = build_cris(config=tiny()).eval()
    ids, mask = tokens([5, 9, 3], 16)
    with torch.no_grad():
        logits = model(images(3), ids, mask)
    assert logits.shape == (3, 1, 64, 64) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert model.input_size == 64
    assert tuple(model.image_mean) == CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert tuple(model.image_std) == CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    assert model.encoder_prefixes == ("backbone.",)
    spec = json.loads(json.dumps(model.spec))  # JSON-serialisable
    assert spec["name"] == "cris" and spec["freeze_encoder"] is False
    rebuilt = build_cris(**{k: v for k, v in spec.items() if k != "name"})
    assert CRISConfig.from_dict(spec["config"]) == model.config
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()
    ]


def test_padding_does_not_change_logits():
    """More padding, with junk ids under the mask, gives the same logits (ids are never read as padding)."""
    model = build_cris(config=tiny()).eval()
    short_ids, short_mask = tokens([6, 3], 10, seed=4)
    long_ids, long_mask = tokens([6, 3], 40, seed=5, junk_padding=True)
    long_ids[:, :10] = torch.where(short_mask.bool(), short_ids, long_ids[:, :10])
    assert not torch.equal(long_ids[:, 6:10], torch.zeros_like(long_ids[:, 6:10]))
    x = images(2)
    with torch.no_grad():
        a = model(x, short_ids, short_mask)
        b = model(x, long_ids, long_mask)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sentence_feature_is_last_attended_token():
    model = build_cris(config=tiny()).eval()
    ids, mask = tokens([7, 4], 12, seed=6)
    with torch.no_grad():
        words, state = model.backbone.encode_text(ids, mask)
        expected = torch.stack([words[0, 6], words[1, 3]]) @ model.backbone.text_projection
        torch.testing.assert_close(state, expected)
        # a different token at the end-of-text position changes the prediction
        x = images(2)
        before = model(x, ids, mask)
        ids[0, 6] = 5
        after = model(x, ids, mask)
        # ... and the sentence feature stays at the last attended position: never found from
        # the ids (argmax would now pick the start-of-text token, the largest id left)
        words, state = model.backbone.encode_text(ids, mask)
        torch.testing.assert_close(state[0], words[0, 6] @ model.backbone.text_projection)
    assert not torch.allclose(before[0], after[0])
    torch.testing.assert_close(before[1], after[1], atol=1e-5, rtol=1e-5)


def test_dynamic_kernel_is_per_sample():
    """Each prompt gets its own 3x3 kernel, and sample i's kernel touches sample i only."""
    model = build_cris(config=tiny()).eval()
    ids, mask = tokens([5, 8, 4], 12, seed=7)
    x = images(1).expand(3, -1, -1, -1)  # the same image under three prompts
    with torch.no_grad():
        _, state = model.backbone.encode_text(ids, mask)
        weight, bias = model.proj.dynamic_kernels(state)
        assert weight.shape == (3, 16, 3, 3) and bias.shape == (3,)
        assert not torch.allclose(weight[0], weight[1]) and not torch.allclose(weight[1], weight[2])
        batch = model(x, ids, mask)
        single = torch.cat([model(x[i : i + 1], ids[i : i + 1], mask[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch[0], batch[1])


def test_sine_positions_2d_columns_then_rows():
    pe = sine_positions_2d(3, 4, 8).reshape(3, 4, 8)  # (H, W, d)
    for r in range(3):
        for c in range(4):
            assert pe[r, c, 0].item() == pytest.approx(math.sin(c))  # first half: column
            assert pe[r, c, 1].item() == pytest.approx(math.cos(c))
            assert pe[r, c, 4].item() == pytest.approx(math.sin(r))  # second half: row
            assert pe[r, c, 7].item() == pytest.approx(math.cos(r / 100))


@pytest.mark.parametrize(
    ("lengths_mask", "size", "match"),
    [
        ("left_padded", 64, "right padding"),
        ("empty_row", 64, "right padding"),
        ("ok", 60, "multiples of 32"),
    ],
)
def test_forward_rejects_bad_inputs(lengths_mask, size, match):
    model = build_cris(config=tiny()).eval()
    ids, mask = tokens([5, 4], 8)
    if lengths_mask == "left_padded":
        mask[1] = mask[1].flip(0)
    elif lengths_mask == "empty_row":
        mask[1] = 0
    with pytest.raises(ValueError, match=match):
        model(images(2, size), ids, mask)
    too_long_ids, too_long_mask = tokens([5, 4], 78)
    with pytest.raises(ValueError, match="word_len"):
        model(images(2), too_long_ids, too_long_mask)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="unknown field.*'vis_dimm'"):
        CRISConfig.from_dict({"vis_dimm": 3})
    with pytest.raises(ValueError, match="'vis_dim' = 48"):
        CRISConfig.from_dict(tiny(vis_dim=48))
    with pytest.raises(ValueError, match="'input_size' = 100"):
        CRISConfig.from_dict({"input_size": 100})
    with pytest.raises(ValueError, match="'fpn_in'"):
        CRISConfig.from_dict({"vision_width": 32})
    assert CRISConfig.from_dict({}) == CRISConfig()


# --- freezing --------------------------------------------------------------------------------


def _one_step(model: CRIS) -> None:
    model.train()
    ids, mask = tokens([5, 7], 10)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(images(2), ids, mask).sigmoid().mean()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("frozen", [True, False])
def test_freeze_encoder(frozen):
    model = build_cris(config=tiny(), freeze_encoder=frozen)
    assert model.freeze_encoder is frozen and model.spec["freeze_encoder"] is frozen
    for name, p in model.named_parameters():
        assert p.requires_grad is (not (frozen and name.startswith("backbone."))), name
    model.train()
    backbone_bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.training is (not frozen) for m in backbone_bns)
    assert model.neck.training and model.neck.txt_proj[1].training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _one_step(model)
    after = model.state_dict()
    encoder = [k for k in before if k.startswith("backbone.") and k != "backbone.logit_scale"]
    changed = [k for k in encoder if not torch.equal(before[k], after[k])]
    if frozen:
        assert changed == []  # weights and BatchNorm statistics bit-identical
    else:
        for k in ("backbone.visual.conv1.weight", "backbone.visual.bn1.running_mean",
                  "backbone.transformer.resblocks.0.attn.in_proj_weight",
                  "backbone.token_embedding.weight", "backbone.text_projection"):
            assert k in changed, k
    assert not torch.equal(before["proj.txt.weight"], after["proj.txt.weight"])
    assert not torch.equal(before["neck.f1_v_proj.0.weight"], after["neck.f1_v_proj.0.weight"])


# --- registry --------------------------------------------------------------------------------


def test_registry_builds_tiny_cris_with_its_tokenizer():
    from vlsm.models import build_model, build_tokenizer, tiny_config

    config = tiny_config("cris")
    model = build_model("cris", config=config, freeze_encoder=True).eval()
    tok = build_tokenizer("cris", config=config)
    batch = tok(["Left atrium cavity of the heart.", ""])
    with torch.no_grad():
        logits = model(images(2), batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (2, 1, 64, 64) and torch.isfinite(logits).all()


def test_cris_tokenizer_from_a_local_folder(tmp_path):
    # `tokenizer=` (TrainConfig.tokenizer, models.CRIS.tokenizer) points an offline node at
    # a CLIP BPE folder instead of the hub; here one holding the tiny vocabulary.
    from vlsm.models import build_model, build_tokenizer, save_pretrained_folder, tiny_config

    clipseg = tiny_config("clipseg")
    folder = save_pretrained_folder(build_model("clipseg", config=clipseg),
                                    build_tokenizer("clipseg", config=clipseg), tmp_path / "bpe")
    config = tiny_config("cris")
    prompts = ["Left atrium cavity of the heart.", ""]
    from_folder = build_tokenizer("cris", config=config, tokenizer=str(folder))(prompts)
    built = build_tokenizer("cris", config=config)(prompts)
    assert torch.equal(from_folder["input_ids"], built["input_ids"])
    assert torch.equal(from_folder["attention_mask"], built["attention_mask"])
