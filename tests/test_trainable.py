"""The trainable under a real local Ray Tune run (slow: starts Ray)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from vlsm import checkpoint as ckpt
from vlsm.axes import EPOCH, TEST_DICE_MEAN, TEST_DICE_STD, VAL_DICE


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    from vlsm.data.cache import prepare_dataset
    from vlsm.data.phantom import write_demo_data

    root = tmp_path_factory.mktemp("phantom")
    demo = write_demo_data(root / "demo", seed=0, n_patients=6, n_test=1, n_val=1)
    return prepare_dataset("camus", demo.camus_root, 64, root / "cache", split_scheme="official", progress=False)


@pytest.fixture
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_config_errors_surface_without_ray():
    from vlsm.trainable import train_vlsm

    with pytest.raises(ValueError, match="unknown key"):
        train_vlsm({"lr_typo": 1.0})


@pytest.mark.slow
def test_trainable_under_ray_tune(caches, ray_local, tmp_path):
    from ray import tune

    from vlsm.models import tiny_config
    from vlsm.trainable import train_vlsm

    param_space = {
        "model": "clipseg",
        "model_config": tiny_config("clipseg"),
        "train_cache": str(caches["train"]),
        "val_cache": str(caches["val"]),
        "test_cache": str(caches["test"]),
        "prompt": tune.grid_search(["P1", "P3"]),
        "lr": 3e-3,
        "batch_size": 8,
        "max_epochs": 2,
        "min_epochs": 1,
    }
    tuner = tune.Tuner(
        tune.with_resources(train_vlsm, {"cpu": 1}),
        param_space=param_space,
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="trainable", verbose=0),
    )
    results = tuner.fit()
    assert not results.errors, results.errors
    assert len(results) == 2
    for result in results:
        assert result.metrics[EPOCH] == 2
        assert 0.0 <= result.metrics[TEST_DICE_MEAN] <= 1.0 and result.metrics[TEST_DICE_STD] >= 0
        assert list(result.metrics_dataframe[VAL_DICE].notna()) == [True, True]  # one report per epoch
        # short epochs under the default checkpoint_interval_s: one checkpoint, the last report's
        assert [p.name for p in Path(result.path).glob("checkpoint_*")] == [Path(result.checkpoint.path).name]
        with result.checkpoint.as_directory() as directory:
            directory = Path(directory)
            per_image = pd.read_parquet(directory / ckpt.PER_IMAGE_FILE)
            assert len(per_image) == 12  # 4 test images x 3 structures
            assert per_image.dice.mean() == pytest.approx(result.metrics[TEST_DICE_MEAN])
            ckpt.load_model(directory / ckpt.BEST_DIR)
