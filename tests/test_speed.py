"""The GPU path's switches (vlsm.speed): each gives the plain path's results on CPU.

Stopping CLIPSeg's vision tower early is exact (bit-identical features and gradients);
attention kernels, fused AdamW and channels_last convolutions change the order of float
operations, so they match within float32 rounding; bf16 autocast within bf16's.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vlsm.config import TrainConfig
from vlsm.models import build_model, build_tokenizer, tiny_config
from vlsm.speed import CONTRACT_METHODS, build_adamw, prepare_model, uses_fused_adamw
from vlsm.train_state import TrainState
from vlsm.trial_data import autocast_for

CPU = torch.device("cpu")
PROMPTS = ["Left ventricular cavity of the heart.", "", "Myocardium in two-chamber view."]


def _batch(model_name: str) -> dict[str, torch.Tensor]:
    cfg = tiny_config(model_name)
    size = build_model(model_name, config=cfg).input_size
    gen = torch.Generator().manual_seed(3)
    return {"pixel_values": torch.randn(len(PROMPTS), 3, size, size, generator=gen),
            **build_tokenizer(model_name, config=cfg)(PROMPTS)}


def _tiny(name: str) -> dict:
    """The tiny config; CLIPSeg's with a 5th vision layer after its last tap (layer 4 of 5)."""
    config = tiny_config(name)
    if name == "clipseg":
        config["vision_config"]["num_hidden_layers"] = 5
    return config


def _model(name: str, **switches) -> torch.nn.Module:
    cfg = TrainConfig(model=name, model_config=_tiny(name), **switches)
    return prepare_model(build_model(name, config=cfg.model_config), cfg, CPU)


def _logits_and_grads(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Training-mode logits and the gradients of a BCE loss on a fixed target."""
    torch.manual_seed(0)  # the same dropout masks in both runs
    model.train()
    logits = model(**batch)
    target = torch.zeros_like(logits).bernoulli_(0.5, generator=torch.Generator().manual_seed(1))
    torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=lambda m, n=name: f"{n}: {m}", **tol)


def test_vision_stop_early_gives_bit_identical_features_and_gradients_with_fewer_flops() -> None:
    batch = _batch("clipseg")
    early, full = _model("clipseg"), _model("clipseg", vision_stop_early=False)
    assert early.vision_stop_early and not full.vision_stop_early  # the default is on
    assert max(early.extract_layers) + 1 < len(early.clip.vision_model.encoder.layers)  # 4 < 5
    with torch.no_grad():
        for a, b in zip(early.encode_image(batch["pixel_values"]), full.encode_image(batch["pixel_values"]),
                        strict=True):
            assert torch.equal(a, b)
    logits_early, grads_early = _logits_and_grads(early, batch)
    logits_full, grads_full = _logits_and_grads(full, batch)
    assert torch.equal(logits_early, logits_full)
    # the skipped last layer gets no gradient on either path: the decoder never reads it
    assert grads_early.keys() == grads_full.keys()
    assert not any(".encoder.layers.4." in name for name in grads_full)
    for name in grads_early:
        assert torch.equal(grads_early[name], grads_full[name]), name
    flops = {}
    for label, model in (("early", early), ("full", full)):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.encode_image(batch["pixel_values"])
        flops[label] = counter.get_total_flops()
    assert flops["early"] < flops["full"]


def test_the_benchmarks_flop_counter_counts_cpu_attention_as_eager_attention_counts_it() -> None:
    """bench.flops: with PyTorch's fused attention on CPU, torch's FlopCounterMode sees no
    attention FLOPs; ours counts the kernel as its eager matmuls (forward), so CPU FLOPs and
    MFU do not depend on the attention switch."""
    from bench.flops import flop_counter

    batch = _batch("clipseg")
    counts = {}
    for attention in ("sdpa", "eager"):
        model = _model("clipseg", attention=attention).eval()
        for label, counter in (("torch", FlopCounterMode(display=False)), ("ours", flop_counter())):
            with counter, torch.no_grad():
                model(**batch)
            counts[attention, label] = counter.get_total_flops()
    assert counts["sdpa", "torch"] < counts["eager", "torch"]  # the CPU kernel is not counted
    assert counts["sdpa", "ours"] == counts["eager", "ours"] == counts["eager", "torch"]  # all matmuls
    sdpa = _model("clipseg").train()
    with flop_counter() as counter:
        sdpa(**batch).float().sum().backward()
    backward = {str(op) for op in counter.get_flop_counts()["Global"]}
    assert "aten._scaled_dot_product_flash_attention_for_cpu_backward" in backward


def test_attention_default_is_what_hugging_face_picks_and_eager_matches_sdpa() -> None:
    batch = _batch("clipseg")
    stock = build_model("clipseg", config=tiny_config("clipseg"))
    assert stock.config._attn_implementation == TrainConfig().attention == "sdpa"
    sdpa, eager = _model("clipseg"), _model("clipseg", attention="eager")
    for part in (eager.clip.vision_model, eager.clip.text_model, eager.decoder):
        assert part.config._attn_implementation == "eager"
    # every attention layer, the decoder's too (they hold a copy of the vision config that
    # transformers' set_attn_implementation does not reach)
    layers = [m for m in eager.modules() if type(m).__name__ == "CLIPSegAttention"]
    assert len(layers) == 5 + 2 + 3  # vision (`_tiny`: 5), text, decoder (one per extract layer)
    assert {m.config._attn_implementation for m in layers} == {"eager"}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        eager.eval()(**batch)
    assert not any("attention" in str(op) for op in counter.get_flop_counts()["Global"])  # no fused kernel ran
    logits_sdpa, grads_sdpa = _logits_and_grads(sdpa, batch)
    logits_eager, grads_eager = _logits_and_grads(eager, batch)
    torch.testing.assert_close(logits_sdpa, logits_eager, rtol=1e-5, atol=1e-5)
    _assert_close(grads_sdpa, grads_eager, rtol=1e-4, atol=1e-6)


def test_fused_adamw_on_cpu_matches_the_plain_one_and_is_on_by_default_only_on_cuda() -> None:
    assert not uses_fused_adamw(TrainConfig(), CPU)
    assert uses_fused_adamw(TrainConfig(), torch.device("cuda"))
    assert not uses_fused_adamw(TrainConfig(fused_adamw=False), torch.device("cuda"))
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(7, 5, generator=gen), torch.randn(5, generator=gen)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(4)]
    results = {}
    for fused in (False, True):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = build_adamw(params, TrainConfig(lr=1e-2, fused_adamw=fused), CPU)
        assert optimizer.defaults["fused"] is fused
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            optimizer.step()
        results[fused] = [p.detach() for p in params]
    for plain, fused in zip(results[False], results[True], strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-7)


def test_fused_adamw_state_survives_a_checkpoint_round_trip(tmp_path) -> None:
    cfg = TrainConfig(lr=1e-2, fused_adamw=True)
    params = [torch.nn.Parameter(torch.ones(3, 2))]
    state = TrainState.fresh(params, cfg, CPU, "fp32")
    params[0].grad = torch.full((3, 2), 0.5)
    state.optimizer.step()
    state.save(tmp_path)
    again = TrainState.fresh([torch.nn.Parameter(torch.ones(3, 2))], cfg, CPU, "fp32")
    again.load(tmp_path)
    assert again.optimizer.defaults["fused"] is True
    saved, loaded = state.optimizer.state_dict()["state"][0], again.optimizer.state_dict()["state"][0]
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(saved[key], loaded[key]), key


def test_channels_last_cris_matches_the_contiguous_model() -> None:
    batch = _batch("cris")
    plain, nhwc = _model("cris"), _model("cris", channels_last=True)
    conv = nhwc.backbone.visual.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    logits_plain, grads_plain = _logits_and_grads(plain, batch)
    logits_nhwc, grads_nhwc = _logits_and_grads(nhwc, batch)
    # training-mode BatchNorm over 3 samples amplifies the kernels' rounding: logits of
    # magnitude ~7 differ by ~1e-4 (eval mode: 2e-6); gradients by 1e-3 of their scale
    torch.testing.assert_close(logits_nhwc, logits_plain, rtol=1e-4, atol=5e-4)
    for name, grad in grads_plain.items():
        assert (grads_nhwc[name] - grad).abs().max() <= 1e-3 * grad.abs().max() + 1e-7, name
    with torch.no_grad():  # the shared-image evaluation path goes through the same hook
        nhwc.eval(), plain.eval()
        for a, b in zip(nhwc.encode_image(batch["pixel_values"]), plain.encode_image(batch["pixel_values"]),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pool_trains", [False, True])
def test_channels_last_reaches_the_first_convolution_of_encode_image(pool_trains: bool) -> None:
    # a frozen pretrained CRIS stores layer4's output (its encode_image runs the trunk
    # alone): the stored features must see the same channels_last input as the plain path
    model = build_model("cris", config=tiny_config("cris"))
    model.connect_trains_when_frozen = pool_trains  # as build_cris sets it for CLIP RN50 weights
    model.set_encoder_frozen(True)
    model = prepare_model(model, TrainConfig(model="cris", model_config=tiny_config("cris"), channels_last=True), CPU)
    seen = []
    model.backbone.visual.conv1.register_forward_pre_hook(  # after prepare_model's: what conv1 is given
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    pixels = _batch("cris")["pixel_values"]
    assert not pixels.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        c5 = model.encode_image(pixels)[2]
    assert seen == [True]
    assert c5.shape[1] == (32 * tiny_config("cris")["vision_width"] if pool_trains else tiny_config("cris")["embed_dim"])


@pytest.mark.parametrize("name", ["clipseg", "cris"])
def test_bf16_autocast_runs_on_cpu_close_to_fp32(name) -> None:
    batch = _batch(name)
    model = _model(name).eval()
    with torch.no_grad():
        fp32 = model(**batch)
        with autocast_for(CPU, "bf16"):
            bf16 = model(**batch)
    assert fp32.dtype == torch.float32 and torch.isfinite(bf16).all()
    scale = fp32.abs().max()
    assert (bf16.float() - fp32).abs().max() <= 0.05 * scale + 1e-3  # bf16 keeps 8 bits of mantissa
    assert not torch.equal(bf16.float(), fp32)  # autocast really ran in bf16


@pytest.mark.slow
def test_compiled_model_gives_the_same_logits_and_keeps_its_state_dict_names() -> None:
    batch = _batch("clipseg")
    plain = _model("clipseg").eval()
    compiled = copy.deepcopy(plain)
    compiled = prepare_model(compiled, TrainConfig(model_config=tiny_config("clipseg"), compile=True), CPU)
    for name in CONTRACT_METHODS:  # the switch took: the methods the loop calls are compiled
        assert hasattr(getattr(compiled, name), "_torchdynamo_orig_callable")
        assert not hasattr(getattr(plain, name), "_torchdynamo_orig_callable")
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(compiled(**batch), plain(**batch), rtol=1e-5, atol=1e-5)


def test_switches_are_validated_by_name() -> None:
    with pytest.raises(ValueError, match=r"attention: expected one of \['sdpa', 'eager'\], got 'flash'"):
        TrainConfig.from_dict({"attention": "flash"})
    with pytest.raises(ValueError, match="fused_adamw"):
        TrainConfig.from_dict({"fused_adamw": "yes please"})
    cfg = TrainConfig.from_dict({"compile": True, "channels_last": True, "fused_adamw": None})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", ["clipseg", "cris"])
def test_the_forward_is_one_graph_without_a_host_sync(name: str) -> None:
    # A host sync mid-forward (a tensor read as a Python bool) stalls a GPU step and breaks
    # a compiled model into pieces; CRIS's right-padding check asserts on the device instead
    # when the mask is on a GPU or being compiled, and still raises ValueError in eager CPU.
    model = _model(name).eval()
    batch = _batch(name)
    explained = torch._dynamo.explain(model)(**batch)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    if name == "cris":
        bad = batch["attention_mask"].clone()
        bad[0] = bad[0].flip(0)  # left padding
        with pytest.raises(ValueError, match="right padding"):
            model(batch["pixel_values"], batch["input_ids"], bad)
        with pytest.raises(RuntimeError, match="right padding"):  # what a compiled step sees
            torch.compile(model, backend="eager")(batch["pixel_values"], batch["input_ids"], bad)
