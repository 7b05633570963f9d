"""The feature store: same results as recomputing the frozen towers, built once, keyed, whole."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from damage import damage

from vlsm import feature_store as fs
from vlsm import integrity
from vlsm.axes import IMAGES_PER_S, SECONDS
from vlsm.config import TrainConfig
from vlsm.data.cache import open_split
from vlsm.models import build_model, build_tokenizer, tiny_config
from vlsm.train import run_training
from vlsm.trial_data import ModelInputs, PromptTable

CPU = torch.device("cpu")


@pytest.fixture
def caches(phantom_caches) -> dict[str, Path]:
    return phantom_caches


@pytest.fixture(scope="module")
def clip_rn50(tmp_path_factory) -> Path:
    """A tiny "OpenAI CLIP RN50" file (no CRIS connect branch): frozen CRIS then trains connect."""
    torch.manual_seed(5)
    state = build_model("cris", config=tiny_config("cris")).backbone.state_dict()
    path = tmp_path_factory.mktemp("clip") / "RN50.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("visual.attnpool.connect.")}, path)
    return path


def _cfg(caches, model: str, **overrides) -> TrainConfig:
    values = dict(model=model, model_config=tiny_config(model), train_cache=str(caches["train"]),
                  val_cache=str(caches["val"]), test_cache=str(caches["test"]), lr=3e-3, batch_size=8,
                  max_epochs=2, min_epochs=1, prompt="P2", freeze_encoder=True)
    return TrainConfig.from_dict({**values, **overrides})


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in (SECONDS, IMAGES_PER_S)} for h in history]


def _inputs(model, splits, cfg: TrainConfig) -> ModelInputs:
    tokenizer = build_tokenizer(cfg.model, config=cfg.model_config)
    return ModelInputs(model, PromptTable(splits, "p2", tokenizer, CPU), CPU, "fp32")


# --- the same results -----------------------------------------------------------------


@pytest.mark.parametrize("model, connect_trains", [("clipseg", False), ("cris", False), ("cris", True)])
def test_forward_is_decode_of_encode_image_and_encode_text(model, connect_trains, clip_rn50):
    pretrained = str(clip_rn50) if connect_trains else None
    net = build_model(model, config=tiny_config(model), pretrained=pretrained, freeze_encoder=True).eval()
    tokens = build_tokenizer(model, config=tiny_config(model))(["Left ventricular cavity", "Myocardium of the heart"])
    ids, mask = torch.as_tensor(tokens["input_ids"]), torch.as_tensor(tokens["attention_mask"])
    pixels = torch.randn(2, 3, net.input_size, net.input_size)
    with torch.no_grad():
        image, text = net.encode_image(pixels), net.encode_text(ids, mask)
        assert torch.equal(net(pixels, ids, mask), net.decode(image, text, mask, (net.input_size,) * 2))
    if model == "cris":  # the split where the frozen part ends: before the pool while `connect` trains
        trained = {n.split(".")[0] for n, p in net.backbone.visual.attnpool.named_parameters() if p.requires_grad}
        assert trained == ({"connect"} if connect_trains else set())
        width = 32 * tiny_config("cris")["vision_width"]  # layer4's channels; C5 has embed_dim
        assert (image[2].shape[1] == width) == connect_trains


@pytest.mark.parametrize("model, connect_trains", [("clipseg", False), ("cris", False), ("cris", True)])
def test_a_frozen_trial_reports_the_same_with_and_without_the_store(caches, clip_rn50, model, connect_trains,
                                                                    monkeypatch):
    """Losses, validation Dice, test Dice and every per-image row: exactly equal on CPU fp32."""
    extra = {"pretrained": str(clip_rn50)} if connect_trains else {}
    read, real = [], fs.SplitFeatures.gather
    monkeypatch.setattr(fs.SplitFeatures, "gather", lambda self, *a: (read.append(self.folder), real(self, *a))[1])
    without = run_training(_cfg(caches, model, feature_store=False, **extra), lambda m, d: None)
    assert not read
    with_store = run_training(_cfg(caches, model, **extra), lambda m, d: None)  # None: on, frozen
    # training, validation and the test all read the store
    assert {p.name.split(".features-")[0] for p in read} == {Path(caches[s]).name for s in ("train", "val", "test")}
    assert _strip(with_store.history) == _strip(without.history)
    assert with_store.test_rows == without.test_rows
    assert (with_store.best_epoch, with_store.best_val_dice) == (without.best_epoch, without.best_val_dice)
    assert any(p.name.startswith(Path(caches["train"]).name + ".features-") for p in Path(caches["train"]).parent.iterdir())


# --- when it applies --------------------------------------------------------------------


def test_only_frozen_trials_use_the_store(caches):
    assert not fs.uses_feature_store(_cfg(caches, "clipseg", freeze_encoder=False))
    assert fs.uses_feature_store(_cfg(caches, "clipseg"))  # None: on when frozen
    assert not fs.uses_feature_store(_cfg(caches, "clipseg", feature_store=False))
    with pytest.raises(ValueError, match="feature_store: True needs freeze_encoder"):
        _cfg(caches, "clipseg", freeze_encoder=False, feature_store=True)


def test_the_store_keys_on_every_module_that_computes_a_models_features():
    # a model's registry entry names the modules that compute its encode_image; any other
    # vlsm module its builder reaches computes no feature, or the key would miss its edits
    import ast
    import importlib.util

    from vlsm.model_registry import MODELS

    generic = {"vlsm.models.common": "seeded init, weight files, input checks",
               "vlsm.models.tokenizer": "prompt tokens: the text table is the trial's, never stored",
               "vlsm.model_registry": "names", "vlsm.registry": "names",
               "vlsm.atomic": "writes a pretrained folder, computes no feature"}
    for entry in MODELS:
        seen, todo = set(), [entry.build.module]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                if name in generic:
                    continue
                tree = ast.parse(Path(importlib.util.find_spec(name).origin).read_text())
                todo += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                         and (n.module or "").startswith("vlsm.")]
        assert seen - set(entry.code_modules) - set(generic) == set(), entry.key


# --- built once, keyed, whole -----------------------------------------------------------


def test_the_store_is_built_once_and_reused_by_the_next_trial(caches, monkeypatch):
    cfg, split = _cfg(caches, "clipseg"), open_split(Path(caches["val"]))
    model = build_model("clipseg", config=tiny_config("clipseg"), freeze_encoder=True, init_seed=3)
    builds = []
    real_build = fs._build
    monkeypatch.setattr(fs, "_build", lambda *a, **k: (builds.append(a[0]), real_build(*a, **k))[1])
    path = fs.store_path(split, fs.store_key(model, split, "fp32", CPU))
    assert not path.exists()
    first = fs.FeatureStore(_inputs(model, [split], cfg), cfg, CPU).split(model, split)
    stamp = (path / "image_0.npy").stat().st_mtime_ns
    second = fs.FeatureStore(_inputs(model, [split], cfg), cfg, CPU).split(model, split)  # another trial
    assert first.folder == second.folder == path and (path / "meta.json").is_file()
    assert len(builds) == 1 and (path / "image_0.npy").stat().st_mtime_ns == stamp
    assert not (path / "image_0.npy").stat().st_mode & 0o222  # read-only
    index = torch.tensor([2, 0])
    pixels = torch.from_numpy(split.images[[2, 0]].copy())
    with torch.no_grad():
        live = _inputs(model, [split], cfg).image_features(model, pixels)
    assert all(torch.equal(a, b) for a, b in zip(second.gather(index), live, strict=True))


def test_a_store_built_on_one_node_is_published_and_fetched_on_the_next(caches, monkeypatch, tmp_path):
    # Caches on shared storage (a file:// URI stands in for s3://): the first node's trial
    # builds each split's store and publishes it beside the cache; a trial on another node
    # fetches it instead of running the frozen towers again, with the same results.
    from vlsm.data import remote_cache

    storage = (tmp_path / "bucket").as_uri()
    uris = {name: remote_cache.publish(Path(caches[name]), storage) for name in ("train", "val", "test")}
    builds = []
    real_build = fs._build
    monkeypatch.setattr(fs, "_build", lambda *a, **k: (builds.append(a[0]), real_build(*a, **k))[1])
    results = []
    for node in ("node-a", "node-b"):
        monkeypatch.setattr(remote_cache, "LOCAL_ROOT", tmp_path / node)
        cfg = _cfg(caches, "clipseg", train_cache=uris["train"], val_cache=uris["val"], test_cache=uris["test"])
        results.append(run_training(cfg, lambda m, d: None))
        if node == "node-a":
            assert len(builds) == 3  # train, validation and test, once each
    assert len(builds) == 3  # node b built none
    published = [p for p in (tmp_path / "bucket" / "cache").iterdir() if ".features-" in p.name]
    assert len(published) == 3 and all((p / "meta.json").is_file() for p in published)
    fetched = sorted(p.name for p in (tmp_path / "node-b").iterdir() if ".features-" in p.name and p.is_dir())
    assert fetched == sorted(p.name for p in published)
    assert _strip(results[0].history) == _strip(results[1].history)
    assert results[0].test_rows == results[1].test_rows


def test_the_key_follows_the_frozen_weights_the_cache_and_the_precision(caches):
    train, val = open_split(Path(caches["train"])), open_split(Path(caches["val"]))
    model = build_model("clipseg", config=tiny_config("clipseg"), freeze_encoder=True)
    key = fs.store_key(model, train, "fp32", CPU)
    other_seed = build_model("clipseg", config=tiny_config("clipseg"), freeze_encoder=True, init_seed=7)
    assert fs.store_key(other_seed, train, "fp32", CPU) != key  # other frozen weights
    assert fs.store_key(model, val, "fp32", CPU) != key  # another cache
    assert fs.store_key(model, train, "bf16", CPU) != key  # another precision
    with torch.no_grad():  # the trained part changes (a finetune, another lr): the same store
        model.decoder.film_mul.weight.add_(1.0)
    assert fs.store_key(model, train, "fp32", CPU) == key
    with torch.no_grad():  # a frozen weight changes (a chained finetune from other towers)
        model.clip.vision_model.post_layernorm.weight.add_(1.0)
    assert fs.store_key(model, train, "fp32", CPU) != key


def test_the_key_follows_the_kernels_that_round_the_features(caches):
    # eager and fused attention (CLIPSeg), NCHW and channels_last convolutions (CRIS) round
    # differently: a trial must not read features another kernel computed
    from vlsm.speed import prepare_model

    train = open_split(Path(caches["train"]))
    for name, switch in (("clipseg", {"attention": "eager"}), ("cris", {"channels_last": True})):
        model = build_model(name, config=tiny_config(name), freeze_encoder=True)
        plain = fs.store_key(prepare_model(model, _cfg(caches, name), CPU), train, "fp32", CPU)
        switched = fs.store_key(prepare_model(model, _cfg(caches, name, **switch), CPU), train, "fp32", CPU)
        assert switched != plain, name


def test_a_failed_build_leaves_nothing(caches, monkeypatch, tmp_path):
    cfg, split = _cfg(caches, "clipseg", eval_batch_size=2), open_split(Path(caches["test"]))
    model = build_model("clipseg", config=tiny_config("clipseg"), freeze_encoder=True, init_seed=11)
    real, calls = model.encode_image, []

    def dies_on_the_second_batch(pixels):
        calls.append(len(pixels))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed during the build")
        return real(pixels)

    monkeypatch.setattr(model, "encode_image", dies_on_the_second_batch)
    path = fs.store_path(split, fs.store_key(model, split, "fp32", CPU))
    with pytest.raises(KeyboardInterrupt):
        fs.FeatureStore(_inputs(model, [split], cfg), cfg, CPU).split(model, split)
    assert not path.exists()
    assert not [p for p in path.parent.iterdir() if path.name in p.name and not p.name.endswith(".lock")]
    monkeypatch.setattr(model, "encode_image", real)
    built = fs.FeatureStore(_inputs(model, [split], cfg), cfg, CPU).split(model, split)
    assert json.loads((built.folder / "meta.json").read_text())["n_images"] == split.n_images


@pytest.mark.parametrize("model, dtype", [("clipseg", torch.float32), ("cris", torch.bfloat16)])
def test_under_bf16_the_store_keeps_the_towers_outputs_bit_for_bit(caches, model, dtype):
    """In the dtype the towers compute: CRIS's convolutions give bf16 (kept as its 16 bits);
    CLIPSeg's residual stream stays float32 under autocast, so its store does too."""
    cfg, split = _cfg(caches, model, precision="bf16"), open_split(Path(caches["test"]))
    net = build_model(model, config=tiny_config(model), freeze_encoder=True)
    inputs = ModelInputs(net, PromptTable([split], "p2", build_tokenizer(model, config=cfg.model_config), CPU),
                         CPU, "bf16")
    stored = fs.FeatureStore(inputs, cfg, CPU).split(net, split)
    with torch.no_grad():
        live = inputs.image_features(net, torch.from_numpy(split.images[[1]].copy()))
    gathered = stored.gather(torch.tensor([1]))
    assert [g.dtype for g in gathered] == [f.dtype for f in live] == [dtype] * len(live)
    assert all(torch.equal(a, b) and a.stride() == b.stride() for a, b in zip(gathered, live, strict=True))


def test_store_device_fraction_places_a_store_and_both_placements_gather_the_same(caches, monkeypatch):
    # On a GPU a split's store is kept on the device when it takes at most
    # train.store_device_fraction of the trial's memory, else streamed from the memory
    # maps (read_rows): the same rows either way. Here a made-up device budget stands in
    # for the GPU's (on CPU there is none, and stores are always read from the maps).
    cfg, split = _cfg(caches, "clipseg"), open_split(Path(caches["val"]))
    model = build_model("clipseg", config=tiny_config("clipseg"), freeze_encoder=True, init_seed=5)
    folder = fs.FeatureStore(_inputs(model, [split], cfg), cfg, CPU).split(model, split).folder
    nbytes = json.loads((folder / "meta.json").read_text())["nbytes"]
    monkeypatch.setattr(fs, "allowed_device_bytes", lambda device: nbytes / 0.3)  # the store is 30% of it
    text = (torch.zeros(1),)
    streamed = fs.SplitFeatures(folder, CPU, text, True, device_fraction=0.2)
    kept = fs.SplitFeatures(folder, CPU, text, True, device_fraction=0.5)
    unwanted = fs.SplitFeatures(folder, CPU, text, False, device_fraction=1.0)
    assert (streamed.on_device, kept.on_device, unwanted.on_device) == (False, True, False)
    index = torch.tensor([3, 0, 3])
    for a, b in zip(streamed.gather(index), kept.gather(index), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="store_device_fraction: expected 0 <= value <= 1, got 1.5"):
        TrainConfig.from_dict({"store_device_fraction": 1.5})


# --- corruption at rest (docs/faults.md, "Caches and feature stores") --------------------


def _store_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "meta.json"}


@pytest.mark.parametrize(("name", "how", "seed"), [("image_0.npy", "truncate", 21), ("image_1.npy", "flip", 22),
                                                   ("meta.json", "truncate", 23)])
def test_a_damaged_store_is_found_and_rebuilt_from_the_model_to_the_same_bytes(caches, monkeypatch, caplog, name,
                                                                               how, seed):
    cfg, split = _cfg(caches, "clipseg"), open_split(Path(caches["val"]))
    # a seed of its own: a store of its own beside the session's phantom cache
    model = build_model("clipseg", config=tiny_config("clipseg"), freeze_encoder=True, init_seed=seed)
    builds, real_build = [], fs._build
    monkeypatch.setattr(fs, "_build", lambda *a, **k: (builds.append(a[0]), real_build(*a, **k))[1])
    folder = fs.FeatureStore(_inputs(model, [split], cfg), cfg, CPU).split(model, split).folder
    clean = _store_bytes(folder)
    damage(folder / name, how)
    with pytest.raises(integrity.CorruptFile, match=rf"^{re.escape(str(folder / name))}: "):
        fs.check_store(folder, fs.store_key(model, split, "fp32", CPU))
    with caplog.at_level(logging.WARNING, logger="vlsm.feature_store"):
        again = fs.FeatureStore(_inputs(model, [split], cfg), cfg, CPU).split(model, split)  # the next trial
    assert f"rebuilding feature store {folder} from the model: {name}: " in caplog.text
    assert len(builds) == 2 and again.folder == folder and _store_bytes(folder) == clean
    index = torch.tensor([1, 0])
    with torch.no_grad():
        live = _inputs(model, [split], cfg).image_features(model, torch.from_numpy(split.images[[1, 0]].copy()))
    assert all(torch.equal(a, b) for a, b in zip(again.gather(index), live, strict=True))


def test_a_damaged_store_on_shared_storage_is_rebuilt_not_trusted(caches, monkeypatch, tmp_path, caplog):
    # node a builds the store and publishes it beside the cache; the published copy rots;
    # node b fetches it, finds the damage and computes the features itself (the same bytes)
    from vlsm.data import remote_cache
    from vlsm.trial_data import open_cache

    uri = remote_cache.publish(Path(caches["val"]), (tmp_path / "bucket").as_uri())
    model = build_model("clipseg", config=tiny_config("clipseg"), freeze_encoder=True, init_seed=24)
    folders = {}
    for node in ("node-a", "node-b"):
        monkeypatch.setattr(remote_cache, "LOCAL_ROOT", tmp_path / node)
        cfg, split = _cfg(caches, "clipseg", val_cache=uri), open_cache(uri, "val_cache")
        with caplog.at_level(logging.WARNING, logger="vlsm.feature_store"):
            folders[node] = fs.FeatureStore(_inputs(model, [split], cfg), cfg, CPU).split(model, split).folder
        if node == "node-a":
            published = tmp_path / "bucket" / "cache" / folders[node].name
            damage(published / "image_2.npy", "flip")
            assert not caplog.text
    assert folders["node-b"].parent == tmp_path / "node-b"
    assert f"rebuilding feature store {folders['node-b']} from the model: image_2.npy: " in caplog.text
    assert _store_bytes(folders["node-a"]) == _store_bytes(folders["node-b"])
