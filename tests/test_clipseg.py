"""CLIPSeg: our forward equals the stock one, really trains the encoders, and loads offline."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import CLIPSegForImageSegmentation

from vlsm.models import build_model, build_tokenizer, save_pretrained_folder, tiny_config
from vlsm.models.clipseg import CLIPSeg

PROMPTS = [
    "Left ventricular cavity of the heart.",
    "",
    "Myocardium in two-chamber view in the cardiac ultrasound at end of the systole cycle.",
    "Left atrium cavity of a seventy-three-year-old female.",
]


@pytest.fixture(scope="module")
def cfg() -> dict:
    return tiny_config("clipseg")


@pytest.fixture(scope="module")
def batch(cfg) -> dict[str, torch.Tensor]:
    tok = build_tokenizer("clipseg", config=cfg)
    gen = torch.Generator().manual_seed(1)
    size = cfg["input_size"]
    return {
        "pixel_values": torch.randn(len(PROMPTS), 3, size, size, generator=gen),
        **tok(PROMPTS),
    }


def _clip_and_decoder(model: torch.nn.Module) -> tuple[dict, dict]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    clip = {k: v for k, v in state.items() if k.startswith("clip.")}
    decoder = {k: v for k, v in state.items() if k.startswith("decoder.")}
    assert clip and decoder and len(clip) + len(decoder) == len(state)
    return clip, decoder


def _one_step(model: torch.nn.Module, batch: dict) -> None:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-3)
    target = (torch.rand(batch["pixel_values"].shape[0], 1, 64, 64) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(**batch), target)
    loss.backward()
    opt.step()


def test_shapes_and_contract_attributes(cfg, batch):
    model = build_model("clipseg", config=cfg)
    logits = model(**batch)
    assert logits.shape == (4, 1, 64, 64) and logits.dtype == torch.float32
    assert model.input_size == 64
    assert model.image_mean == (0.485, 0.456, 0.406)
    assert model.image_std == (0.229, 0.224, 0.225)
    assert model.encoder_prefixes == ("clip.",)
    assert json.loads(json.dumps(model.spec)) == {
        "name": "clipseg",
        "pretrained": None,
        "checkpoint": None,
        "config": cfg,
        "freeze_encoder": False,
        "init_seed": 0,
    }
    one = model(**{k: v[:1] for k, v in batch.items()})  # batch of one keeps its dims
    assert one.shape == (1, 1, 64, 64)
    # input smaller than the configured size: position embeddings interpolate, logits at input size
    small = model(torch.randn(2, 3, 48, 48), batch["input_ids"][:2], batch["attention_mask"][:2])
    assert small.shape == (2, 1, 48, 48)


def test_forward_matches_stock_huggingface_forward(cfg, batch):
    model = build_model("clipseg", config=cfg).eval()
    stock = CLIPSegForImageSegmentation(model.config).eval()
    stock.load_state_dict(model.state_dict())
    with torch.no_grad():
        ours = model(**batch)  # (B, 1, H, W)
        theirs = stock(**batch).logits  # (B, H, W)
        model.stock_forward = True
        flagged = model(**batch)
    assert ours.shape == (4, 1, 64, 64)
    diff = (ours[:, 0] - theirs).abs().max().item()
    assert diff < 1e-5, diff
    assert torch.equal(flagged[:, 0], theirs)
    # the prompt matters: different prompts give different maps for the same image
    assert (ours[0] - ours[2]).abs().max() > 1e-4


def test_padding_beyond_the_mask_does_not_change_logits(cfg, batch):
    model = build_model("clipseg", config=cfg).eval()
    ids = batch["input_ids"].clone()
    mask = batch["attention_mask"]
    ids[mask == 0] = 7  # a different pad id: only the mask may say what is padding
    with torch.no_grad():
        assert torch.allclose(model(**batch), model(batch["pixel_values"], ids, mask), atol=1e-6)


def test_stock_forward_never_trains_the_encoders(cfg, batch):
    """The pitfall itself: Hugging Face's forward leaves every CLIP parameter without gradient."""
    stock = build_model("clipseg", config={**cfg, "stock_forward_no_grad_encoders": True})
    stock(**batch).mean().backward()
    assert all(p.grad is None for p in stock.clip.parameters())
    assert all(p.grad is not None for p in stock.decoder.parameters())

    ours = build_model("clipseg", config=cfg)
    ours(**batch).mean().backward()
    with_grad = {n for n, p in ours.clip.named_parameters() if p.grad is not None}
    assert "text_model.embeddings.token_embedding.weight" in with_grad
    assert "text_projection.weight" in with_grad
    assert "vision_model.embeddings.patch_embedding.weight" in with_grad
    assert "vision_model.encoder.layers.2.mlp.fc2.weight" in with_grad  # last tapped layer


def test_unfrozen_step_changes_clip_and_decoder(cfg, batch):
    model = build_model("clipseg", config=cfg, freeze_encoder=False)
    clip0, dec0 = _clip_and_decoder(model)
    _one_step(model, batch)
    clip1, dec1 = _clip_and_decoder(model)
    for tower in (
        "text_model.embeddings.token_embedding",
        "vision_model.embeddings.patch_embedding",
    ):
        key = f"clip.{tower}.weight"
        assert not torch.equal(clip0[key], clip1[key]), key
    changed = [k for k in clip0 if not torch.equal(clip0[k], clip1[k])]
    assert len(changed) > len(clip0) // 2, f"{len(changed)} of {len(clip0)} clip tensors changed"
    assert any(not torch.equal(dec0[k], dec1[k]) for k in dec0)


def test_frozen_step_leaves_clip_bit_identical_and_trains_decoder(cfg, batch):
    model = build_model("clipseg", config=cfg, freeze_encoder=True)
    assert model.freeze_encoder and model.spec["freeze_encoder"] is True
    assert not any(p.requires_grad for p in model.clip.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    model.train()
    assert not model.clip.training and model.decoder.training
    clip0, dec0 = _clip_and_decoder(model)
    _one_step(model, batch)
    clip1, dec1 = _clip_and_decoder(model)
    assert all(torch.equal(clip0[k], clip1[k]) for k in clip0)
    assert sum(not torch.equal(dec0[k], dec1[k]) for k in dec0) > len(dec0) // 2


def test_authors_setting_leaves_unfrozen_clip_unchanged(cfg, batch):
    model = build_model("clipseg", config={**cfg, "stock_forward_no_grad_encoders": True})
    clip0, dec0 = _clip_and_decoder(model)
    _one_step(model, batch)
    clip1, dec1 = _clip_and_decoder(model)
    assert all(torch.equal(clip0[k], clip1[k]) for k in clip0)
    assert any(not torch.equal(dec0[k], dec1[k]) for k in dec0)


def test_spec_rebuilds_identical_weights_without_touching_global_rng(cfg):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model = build_model("clipseg", config=cfg, freeze_encoder=True)
    assert torch.equal(torch.rand(3), expected)
    rebuilt = build_model(**json.loads(json.dumps(model.spec)))
    assert rebuilt.freeze_encoder
    a, b = model.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_local_pretrained_folder_round_trip(cfg, batch, tmp_path, monkeypatch):
    model = build_model("clipseg", config=cfg)
    _one_step(model, batch)  # weights that no seeded init could reproduce
    tok = build_tokenizer("clipseg", config=cfg)
    folder = save_pretrained_folder(model, tok, tmp_path / "tiny-clipseg")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left

    calls = []
    original = CLIPSeg.from_pretrained.__func__

    def spy(cls, source, *args, **kwargs):
        calls.append(source)
        return original(cls, source, *args, **kwargs)

    monkeypatch.setattr(CLIPSeg, "from_pretrained", classmethod(spy))
    loaded = build_model("clipseg", pretrained=folder, freeze_encoder=True)
    assert calls == [str(folder)]  # the from_pretrained path a hub id takes
    assert loaded.input_size == 64 and loaded.spec["pretrained"] == str(folder)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch), loaded.eval()(**batch))

    tok2 = build_tokenizer("clipseg", pretrained=folder)
    assert tok2.max_length == tok.max_length
    assert torch.equal(tok2(PROMPTS)["input_ids"], batch["input_ids"])
    # a standard Hugging Face folder: the stock class loads it with nothing missing
    _, info = CLIPSegForImageSegmentation.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_checkpoint_file_loads_strictly(cfg, tmp_path):
    from safetensors.torch import save_file

    source = build_model("clipseg", config=cfg)
    with torch.no_grad():
        source.decoder.film_mul.weight.add_(1.0)
    state = {f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        model = build_model("clipseg", config=cfg, checkpoint=tmp_path / name)
        assert torch.equal(model.decoder.film_mul.weight, source.decoder.film_mul.weight)
        assert model.spec["checkpoint"] == str(tmp_path / name)
    del state["module.decoder.film_add.bias"]
    state["module.decoder.film_mul.weight"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"missing \(1\): decoder.film_add.bias.*wrong shape"):
        build_model("clipseg", config=cfg, checkpoint=tmp_path / "bad.safetensors")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs pretrained= .* or config="),
        ({"config": {"extract_layer": [1]}}, r"unknown key\(s\) \['extract_layer'\]"),
        ({"config": {"text_config": {"hidden": 8}}}, r"config\['text_config'\]: unknown key"),
        (
            {"config": {"input_size": 60, "vision_config": {"patch_size": 8}}},
            "multiple of the patch size 8",
        ),
        ({"config": {"stock_forward_no_grad_encoders": "yes"}}, "expected true or false"),
        ({"pretrained": "/no/such/folder"}, "no such folder"),
        ({"pretrained": "vlsm-test/no-such-model"}, "not in the local Hugging Face cache"),
        ({"pretrained": "CIDAS/x", "config": {"reduce_dim": 8}}, "architecture comes from"),
    ],
)
def test_user_errors_name_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model("clipseg", **kwargs)


def test_forward_rejects_mismatched_inputs(cfg, batch):
    model = build_model("clipseg", config=cfg)
    with pytest.raises(ValueError, match="attention_mask"):
        model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"][:, :5])
    with pytest.raises(ValueError, match="square"):
        model(torch.zeros(4, 3, 64, 48), batch["input_ids"], batch["attention_mask"])
