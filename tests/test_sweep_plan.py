"""The sweep definition and its plan: YAML loading, overrides, the 92-trial grid, chains."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from sweeps.cell import Cell
from sweeps.grid import dependents, expand_grid
from sweeps.plan import dataset_sizes, format_plan
from sweeps.spec import SpecError, load_spec
from vlsm.axes import STRATEGY_FINETUNE, STRATEGY_SYNTHETIC


def _cell_records(folder: Path, *cells: Cell):
    """The records of a sweep folder's planned cells, as the driver writes them first."""
    from sweeps.cell import CELL_ID
    from sweeps.record import CellRecords

    records = CellRecords(folder / "cells")
    records.plan({"grid": list(cells)}, {c.cell_id: {CELL_ID: c.cell_id} for c in cells}, dict.fromkeys(
        (c.cell_id for c in cells), 0.0))
    return records


def test_paper_grid_has_92_trials_with_the_paper_axes() -> None:
    cells = expand_grid(load_spec())
    assert len(cells) == 92
    counts = Counter(c.strategy for c in cells)
    assert counts == {"real": 32, "synthetic": 28, STRATEGY_FINETUNE: 32}
    assert not any(c.strategy == STRATEGY_SYNTHETIC and c.prompt == "P7" for c in cells)
    assert len({c.cell_id for c in cells}) == 92


def test_each_finetune_starts_from_its_synthetic_upstream_and_p7_from_p6() -> None:
    cells = {c.cell_id: c for c in expand_grid(load_spec())}
    for cell in cells.values():
        if cell.strategy != STRATEGY_FINETUNE:
            assert cell.upstream is None
            continue
        upstream = cells[cell.upstream]
        assert upstream.strategy == STRATEGY_SYNTHETIC
        assert (upstream.model, upstream.encoder) == (cell.model, cell.encoder)
        assert upstream.prompt == ("P6" if cell.prompt == "P7" else cell.prompt)


def test_longest_chains_come_first() -> None:
    cells = expand_grid(load_spec())
    waiting = dependents(cells)
    first_synthetic = [c for c in cells if c.strategy == STRATEGY_SYNTHETIC][0]
    assert cells[0] == first_synthetic
    assert first_synthetic.prompt == "P6"  # P6 feeds both the P6 and the P7 finetunes
    assert len(waiting[first_synthetic.cell_id]) == 2
    order = [c.strategy for c in cells]
    assert order.index(STRATEGY_FINETUNE) > max(i for i, s in enumerate(order) if s == STRATEGY_SYNTHETIC)


def test_finetune_subset_pulls_in_its_upstream() -> None:
    spec = load_spec(overrides=["grid.strategies=['synth-PT:real-FT']", "grid.models=[CRIS]", "grid.prompts=[P7]"])
    cells = expand_grid(spec)
    ids = [c.cell_id for c in cells]
    assert sorted(ids[:2]) == ["cris-synthetic-frozen-p6", "cris-synthetic-unfrozen-p6"]
    assert sorted(ids[2:]) == ["cris-synth-pt-real-ft-frozen-p7", "cris-synth-pt-real-ft-unfrozen-p7"]


def test_overrides_and_demo_overlay() -> None:
    spec = load_spec(demo=True, overrides=["train.max_epochs=3", "models.CRIS.train.lr=1e-4"])
    assert spec.data.demo is True
    assert spec.train["max_epochs"] == 3
    assert spec.models["CRIS"].train["lr"] == pytest.approx(1e-4)
    assert spec.models["CLIPSeg"].config == "tiny"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("grid.bogus=1", "unknown key(s) ['bogus']"),
        ("grid.prompts=[P9]", "grid.prompts[0]: expected one of ['P0', 'P1', 'P2'"),
        ("grid.finetune_upstream.P3=P9", "grid.finetune_upstream.P3: expected one of ['P0',"),
        ("models.SAM.pretrained=x", "models.SAM: expected one of ['CLIPSeg', 'CRIS'], got 'SAM'"),
        ("data.split_scheme=random", "data.split_scheme: expected one of ['paper', 'official'], got 'random'"),
        ("run.max_failures=many", "expected a number"),
        ("oops", "expected key=value"),
        ("train.max_epoch=5", "train + models.CLIPSeg.train: TrainConfig: unknown key(s) ['max_epoch']"),
        ("models.CRIS.train.bce_weight=abc", "train + models.CRIS.train: TrainConfig: bce_weight"),
        ("models.CLIPSeg.config=big", "models.CLIPSeg.config: expected null, 'tiny' or a mapping, got 'big'"),
    ],
)
def test_bad_definitions_name_the_key(override: str, message: str) -> None:
    with pytest.raises(SpecError, match=None) as err:
        load_spec(overrides=[override])
    assert message in str(err.value)


def test_bad_yaml_file_names_the_file(tmp_path) -> None:
    bad = tmp_path / "mine.yaml"
    bad.write_text("train:\n  max_epochs: [unclosed\n")
    with pytest.raises(SpecError, match="mine.yaml"):
        load_spec(config=bad)


def test_cell_ids_are_stable() -> None:
    cell = Cell("CLIPSeg", STRATEGY_FINETUNE, "frozen", "P3", upstream="x")
    assert cell.cell_id == "clipseg-synth-pt-real-ft-frozen-p3"
    assert cell.train_data == "camus"
    assert Cell("CRIS", STRATEGY_SYNTHETIC, "unfrozen", "P0").train_data == "sdm"


def test_override_inside_an_unset_section() -> None:
    spec = load_spec(overrides=["models.CLIPSeg.config.stock_forward_no_grad_encoders=true"])
    assert spec.models["CLIPSeg"].config == {"stock_forward_no_grad_encoders": True}


def _recorded(folder, configs: dict, storage: str = "s") -> None:
    """A sweep folder as a run leaves it: sweep.json and one record per cell."""
    from sweeps.record import CellRecord, CellRecords

    folder.write_record(storage=storage, mlflow_uri=None, experiments={"grid": list(configs)})
    folder.cells.mkdir(exist_ok=True)
    for cell_id, config in configs.items():
        CellRecords(folder.cells).save(CellRecord(cell_id, {}, 42, None, "grid", config))


def test_resuming_with_other_settings_is_refused(tmp_path) -> None:
    from sweeps.folder import SweepFolder, resume_mismatch

    folder = SweepFolder(tmp_path)
    configs = {"cris-real-frozen-p1": {"lr": 1e-3, "max_epochs": 2, "init_from": None}}
    assert resume_mismatch(folder, configs, "s") is None  # nothing to resume yet
    _recorded(folder, configs)
    assert resume_mismatch(folder, configs, "s") is None
    changed = {"cris-real-frozen-p1": {"lr": 1e-3, "max_epochs": 5, "init_from": None}}
    assert "max_epochs was 2, now 5" in resume_mismatch(folder, changed, "s")
    more = {**configs, "cris-real-frozen-p2": {"lr": 1e-3}}
    assert resume_mismatch(folder, more, "s") is None  # added cells run in an experiment of their own
    assert "left out ['cris-real-frozen-p1']" in resume_mismatch(folder, {"cris-real-frozen-p2": {}}, "s")
    # a sweep recorded before a setting existed resumes while the setting keeps its default
    newer = {"cris-real-frozen-p1": {**configs["cris-real-frozen-p1"], "checkpoint_interval_s": 600.0}}
    assert resume_mismatch(folder, newer, "s") is None
    newer["cris-real-frozen-p1"]["checkpoint_interval_s"] = 0
    assert "checkpoint_interval_s was 600.0, now 0" in resume_mismatch(folder, newer, "s")


def test_resuming_with_another_storage_is_refused(tmp_path) -> None:
    from sweeps.folder import SweepFolder, resume_mismatch

    folder = SweepFolder(tmp_path)
    _recorded(folder, {}, storage="s3://b/run-1")
    assert "give the same --storage" in resume_mismatch(folder, {}, "s3://b/run-2")
    assert resume_mismatch(folder, {}, "s3://b/run-1") is None


def test_each_sweep_gets_its_own_folder_under_shared_storage(tmp_path) -> None:
    from sweeps.folder import SweepFolder

    a, b = SweepFolder(tmp_path / "a").storage("s3://bucket/sweeps/"), SweepFolder(tmp_path / "b").storage("s3://bucket/sweeps")
    assert a.startswith("s3://bucket/sweeps/a-") and b.startswith("s3://bucket/sweeps/b-") and a != b
    assert SweepFolder(tmp_path / "a").storage(None) == str(tmp_path / "a" / "ray")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "ray://head:10001"], "must run on the cluster"),
        (["--resume"], "holds no sweep to resume"),
        (["--camus-root", "."], "models.CRIS: no weights"),
        (["--camus-root", "no/such/CAMUS"], "--camus-root (data.camus_root): no/such/CAMUS is not a folder"),
        (["--set", "grid.finetune_upstream.P7=P7"], "grid.finetune_upstream: P7 -> P7"),
    ],
)
def test_cluster_and_resume_misuse_is_refused_before_anything_runs(tmp_path, capsys, args, message) -> None:
    from sweeps.paper_grid import main

    assert main(["--output", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("how", ["host:port", "auto", "auto, none here"])
def test_no_reachable_cluster_is_one_line_before_any_data_is_prepared(how, tmp_path, capsys, monkeypatch) -> None:
    # the headline command on a machine without a cluster: Ray would fail only after the
    # caches were built, with a ConnectionError traceback
    import ray._private.services

    from sweeps.paper_grid import main

    dead = f"127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address, said = dead, f"no Ray cluster answers at {dead}"
    if how == "auto":
        monkeypatch.setenv("RAY_ADDRESS", dead)  # what "auto" reads first
        address = "auto"
    elif how == "auto, none here":  # no `ray start` on this node, nor a Ray process
        monkeypatch.setattr(ray._private.services, "find_gcs_addresses", lambda: set())
        monkeypatch.setattr(ray._private.services, "find_bootstrap_address", lambda temp_dir: None)
        address, said = "auto", "no Ray cluster found on this node"
    out = tmp_path / "out"
    assert main(["--output", str(out), "--address", address, "--storage", str(tmp_path / "shared")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --address {address}: {said}")
    assert "`ray start --head`" in err and "`ray up ray_cluster.yaml`" in err and "leave out --address" in err
    assert not out.exists() and not (tmp_path / "shared").exists()


def test_a_cluster_needs_shared_storage(tmp_path, capsys, monkeypatch) -> None:
    import socket

    from sweeps.paper_grid import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as head:  # something answers where the head would
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = f"127.0.0.1:{head.getsockname()[1]}"
        assert main(["--output", str(tmp_path / "out"), "--address", address]) == 2
    err = capsys.readouterr().err
    assert "--address needs --storage" in err and "without --address the sweep runs on a local Ray" in err
    assert not (tmp_path / "out").exists()


def test_rays_advice_to_resume_with_tuner_restore_is_left_out(capsys) -> None:
    # the sweep resumes by running the same command again (the driver says so last)
    import logging

    from sweeps.tuner import fit

    class Interrupted:  # what tune.run logs when Ctrl-C ends an experiment
        def fit(self):
            logging.getLogger("ray.tune.tune").warning(
                "Experiment has been interrupted, but the most recent state was saved.\n"
                'Resume experiment with: Tuner.restore(path="/x/ray/grid", trainable=...)')
            return "results"

    handler = logging.StreamHandler()
    logging.getLogger("ray.tune.tune").addHandler(handler)
    try:
        assert fit(Interrupted()) == "results"
    finally:
        logging.getLogger("ray.tune.tune").removeHandler(handler)
    err = capsys.readouterr().err
    assert "Experiment has been interrupted, but the most recent state was saved." in err
    assert "Tuner.restore" not in err and not logging.getLogger("ray.tune.tune").filters


def test_a_failing_mlflow_store_never_raises_into_tune(tmp_path, caplog) -> None:
    from types import SimpleNamespace

    from sweeps.folder import SweepFolder
    from sweeps.tracking import MLflowTrialCallback, SweepTracker

    tracker = SweepTracker(SweepFolder(tmp_path).default_tracking_uri(), "broken", tmp_path)
    (tmp_path / "mlflow.db").unlink()  # the store is gone: every MLflow call now fails
    (tmp_path / "mlflow.db").write_bytes(b"not a database")
    records = _cell_records(tmp_path, Cell("CRIS", "real", "frozen", "P1"))
    trial = SimpleNamespace(config={"cell_id": "cris-real-frozen-p1"}, trial_id="t1", checkpoint=None, last_result={})
    callback = MLflowTrialCallback(tracker, records)
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, {"epoch": 1, "val_dice": 0.5})
    callback.on_trial_complete(0, [], trial)
    assert "MLflow logging failed" in caplog.text


def test_a_trial_without_a_finite_epoch_closes_its_mlflow_run_as_failed(tmp_path) -> None:
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from sweeps.chain import RecordCallback
    from sweeps.folder import SweepFolder
    from sweeps.tracking import MLflowTrialCallback, SweepTracker

    uri = SweepFolder(tmp_path).default_tracking_uri()
    tracker = SweepTracker(uri, "s", tmp_path)
    records = _cell_records(tmp_path, Cell("CRIS", "synthetic", "frozen", "P6"))
    trial = SimpleNamespace(config={"cell_id": "cris-synthetic-frozen-p6"}, trial_id="t1", checkpoint=None,
                            last_result={"best_epoch": 0, "stop_reason": "non-finite val_loss at epoch 1"})
    callbacks = [RecordCallback(records, 1), MLflowTrialCallback(tracker, records)]  # as the runner orders them
    callbacks[1].on_trial_start(0, [], trial)
    for callback in callbacks:
        callback.on_trial_complete(0, [], trial)
    run = MlflowClient(tracking_uri=uri).get_run(records["cris-synthetic-frozen-p6"].run_id)
    assert run.info.status == "FAILED" and run.data.tags["vlsm.status"] == "failed"
    assert "non-finite val_loss" in run.data.tags["vlsm.reason"]


def test_a_resumed_sweep_logs_trials_where_the_driver_logs_now(tmp_path) -> None:
    # Ray restores callbacks from the first launch's pickle; setup() rebinds them to the
    # tracker this launch made for the same sweep folder (here: another MLflow store).
    import pickle
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from sweeps.tracking import MLflowTrialCallback, SweepTracker

    sweep = tmp_path / "sweep"
    first_uri, now_uri = (f"sqlite:///{tmp_path / name}" for name in ("first.db", "now.db"))
    records = _cell_records(sweep, Cell("CRIS", "real", "frozen", "P1"))
    pickled = pickle.dumps(MLflowTrialCallback(SweepTracker(first_uri, "s", sweep), records))
    now = SweepTracker(now_uri, "s", sweep)
    restored = pickle.loads(pickled)
    restored.setup(stop=None, num_samples=1, total_num_samples=1)
    assert restored.tracker is now
    trial = SimpleNamespace(config={"cell_id": "cris-real-frozen-p1"}, trial_id="t1")
    restored.on_trial_start(0, [], trial)

    def trial_runs(uri: str) -> int:
        client = MlflowClient(tracking_uri=uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        return len(client.search_runs(experiments, filter_string="tags.`vlsm.role` = 'trial'"))

    assert trial_runs(now_uri) == 1 and trial_runs(first_uri) == 0


def test_camus_without_test_ground_truth_is_named_before_anything_runs(tmp_path, monkeypatch) -> None:
    # an old CAMUS 2019 download has no test masks: prepare gives no "test" split, and
    # every trial would fail on its missing test cache inside Ray
    import vlsm.data.cache
    from sweeps.data_setup import DataError, DataRoots, prepare_caches

    def prepare_records(records, size, cache_dir, **kwargs):
        return {"train": cache_dir / "train", "val": cache_dir / "val"}

    monkeypatch.setattr(vlsm.data.cache, "load_records", lambda *args: [])
    monkeypatch.setattr(vlsm.data.cache, "prepare_records", prepare_records)
    spec = load_spec(demo=True, overrides=["grid.models=[CRIS]"])
    roots = DataRoots(camus_root=tmp_path / "CAMUS", demo=False)
    cells = [c for c in expand_grid(spec) if c.strategy == "real"]
    with pytest.raises(DataError, match=r"CAMUS.*no test split with ground truth"):
        prepare_caches(spec, roots, tmp_path / "cache", cells)


def test_the_lr_search_space_is_typed_and_checked_before_anything_runs(tmp_path, capsys) -> None:
    from sweeps.paper_grid import main
    from sweeps.spec import lr_search_space

    space = lr_search_space(load_spec())  # search_spaces/lr_search.yaml
    assert (space.cell.strategy, space.cell.prompt, space.metric, space.mode) == ("real", "P1", "val_dice", "max")
    assert space.models["CRIS"].lr_min == 1e-6 and space.asha.grace_period == 5
    ranges = "models: {CRIS: {lr_min: 1.0e-4, lr_max: 1.0e-2}, CLIPSeg: {lr_min: 1.0e-4, lr_max: 1.0e-2}}\n"
    cases = {
        "asha: {grace: 1}\n" + ranges: "asha: unknown key(s) ['grace']",
        "cell: {prompt: P9}\n" + ranges: "cell.prompt: expected one of ['P0', 'P1',",
        "models: {CRIS: {lr_min: low, lr_max: 1.0}}\n": "models.CRIS.lr_min: expected a number, got 'low'",
        "models: {CRIS: {lr_min: 1.0e-4, lr_max: 1.0e-2}}\n": "models.CLIPSeg needs 0 < lr_min < lr_max, got None",
        "metric: test_dice_mean\n" + ranges: "metric: expected one of ['val_dice', 'val_loss', 'best_val_dice',",
        "cell: {strategy: mixed}\nmode: maximal\n" + ranges: "cell.strategy: expected one of ['real',",
        "mode: maximal\n" + ranges: "mode: expected one of ['max', 'min'], got 'maximal'",
        "models: {CRIS: {lr_min: 0, lr_max: 1.0e-2}, CLIPSeg: {lr_min: 1.0e-2, lr_max: 1.0e-4}}\n":
            "models.CRIS.lr_min: expected a finite value > 0, got 0.0",
        "asha: {max_t: 5}\n": "missing key(s) ['models']",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"lr{i}.yaml"
        path.write_text(text)
        with pytest.raises(SpecError) as err:
            lr_search_space(load_spec(overrides=[f"lr_search.space={path}"]))
        assert str(path) in str(err.value) and message in str(err.value), (text, str(err.value))
    output = tmp_path / "out"
    assert main(["--output", str(output), "--lr-search", "2", "--set", f"lr_search.space={tmp_path / 'lr0.yaml'}"]) == 2
    assert "asha: unknown key(s) ['grace']" in capsys.readouterr().err and not output.exists()


def test_the_sweeps_mlflow_run_is_closed_however_the_run_ends(tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from sweeps.options import plan_sweep
    from sweeps.paper_grid import build_parser
    from sweeps.session import mlflow_sweep

    plan = plan_sweep(build_parser().parse_args(["--output", str(tmp_path / "sweep")]))
    client = MlflowClient(tracking_uri=plan.folder.default_tracking_uri())

    def parent_status(tracker) -> str:
        return client.get_run(tracker.parent_run_id).info.status

    with pytest.raises(RuntimeError), mlflow_sweep(plan) as tracker:
        raise RuntimeError("a bug in the run")
    assert parent_status(tracker) == "FAILED"
    with pytest.raises(KeyboardInterrupt), mlflow_sweep(plan) as again:
        assert again.parent_run_id == tracker.parent_run_id  # one parent run, reopened
        assert parent_status(again) == "RUNNING"
        raise KeyboardInterrupt
    assert parent_status(tracker) == "KILLED"
    with mlflow_sweep(plan) as tracker:
        tracker.finish_sweep("FINISHED")
    assert parent_status(tracker) == "FINISHED"


def test_a_resumed_trial_logs_each_epoch_to_mlflow_once(tmp_path) -> None:
    # Ray replays the results after a trial's last checkpoint when it resumes it: the
    # epochs MLflow already holds are not logged again.
    from types import SimpleNamespace

    from sweeps.tracking import MLflowTrialCallback, SweepTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    records = _cell_records(tmp_path, Cell("CRIS", "real", "frozen", "P1"))
    trial = SimpleNamespace(config={"cell_id": "cris-real-frozen-p1"}, trial_id="t1")
    first = MLflowTrialCallback(SweepTracker(uri, "s", tmp_path), records)
    for epoch in (1, 2, 3):
        first.on_trial_result(0, [], trial, {"epoch": epoch, "val_dice": 0.1 * epoch})
    resumed_tracker = SweepTracker(uri, "s", tmp_path)  # the next launch
    resumed = MLflowTrialCallback(resumed_tracker, records)
    for epoch in (2, 3, 4):  # resumed from the epoch-1 checkpoint
        resumed.on_trial_result(0, [], trial, {"epoch": epoch, "val_dice": 0.1 * epoch})
    run_id = records["cris-real-frozen-p1"].run_id  # found by the record's run id: one run
    history = resumed_tracker.client.get_metric_history(run_id, "val_dice")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert len(resumed_tracker.client.search_runs([resumed_tracker.experiment_id], "tags.`vlsm.role` = 'trial'")) == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("grid.prompts=[]", "grid.prompts: expected one value or more, got ()"),
        ("run.max_failures=-1", "run.max_failures: expected a finite value >= 0, got -1"),
        ("run.max_concurrent=-2", "run.max_concurrent: expected a finite value >= 0, got -2"),
        ("lr_search.trials=-3", "lr_search.trials: expected a finite value >= 0, got -3"),
        ("run.expected_epochs=0", "run.expected_epochs: expected a finite value >= 1, got 0"),
        ("models.CLIPSeg.resources.unfrozen.gpu=-0.5", "CLIPSeg.resources.unfrozen.gpu: expected a finite value >= 0"),
        ("models.CLIPSeg.resources.unfrozen.gpu=-2", "models.CLIPSeg.resources.unfrozen.gpu: expected a finite value"),
        ("models.CRIS.resources.frozen.gpu=1.5", "frozen.gpu: expected a share in [0, 1] or a whole number of GPUs"),
        ("models.CRIS.resources.frozen.tpu=1", "models.CRIS.resources.frozen: unknown key(s) ['tpu']; expected"),
        ("models.CRIS.resources.warm.cpu=1", "models.CRIS.resources.warm: expected one of ['frozen', 'unfrozen']"),
        ("models.CRIS.resources.frozen.cpu=0", "models.CRIS.resources.frozen.cpu: expected a finite value > 0, got 0"),
        ("models.CLIPSeg.train.lr=.inf", "lr: expected a finite value > 0, got inf"),
        ("train.weight_decay=.nan", "weight_decay: expected a finite value >= 0, got nan"),
    ],
)
def test_values_that_cannot_run_are_refused_with_their_key(override: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(demo=True, overrides=[override])
    assert message in str(err.value)


def test_option_values_keep_their_type_and_the_demo_checks_its_own_settings(tmp_path, monkeypatch) -> None:
    from sweeps.options import plan_sweep
    from sweeps.paper_grid import build_parser

    def plan(*args: str):
        return plan_sweep(build_parser().parse_args([*args, "--dry-run"]))

    monkeypatch.chdir(tmp_path)
    for name in ("2023", "007", "1e5"):  # folder names YAML would read as numbers
        (tmp_path / name).mkdir()
        assert plan("--camus-root", name, "--strategies", "real").spec.data.camus_root == name
    assert load_spec(overrides=["train.weight_decay=1e-4"]).train["weight_decay"] == 1e-4  # a float, not text
    # the demo runs with its own min_epochs (1), so 3 epochs are fine; the paper's 10 would refuse
    assert plan("--set", "train.max_epochs=3").spec.train["max_epochs"] == 3
    with pytest.raises(SpecError, match="min_epochs"):
        plan("--camus-root", "2023", "--strategies", "real", "--set", "train.max_epochs=3")


def test_unusable_output_and_tracking_store_are_refused_before_anything_runs(tmp_path, capsys, monkeypatch) -> None:
    from sweeps.paper_grid import main

    (tmp_path / "a-file").write_text("x")
    assert main(["--output", str(tmp_path / "a-file" / "sweep")]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["--output", str(tmp_path / "s"), "--mlflow-uri", "http://127.0.0.1:9"]) == 2
    assert "no MLflow tracking server answers at http://127.0.0.1:9" in capsys.readouterr().err
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(read_only) else real_access(path, mode))
    assert main(["--output", str(tmp_path / "s2"), "--cache-dir", str(read_only / "cache")]) == 2
    assert f"--cache-dir {read_only / 'cache'}: {read_only} is not writable" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "s2").exists()


def test_fp16_without_a_gpu_is_refused_before_anything_runs(tmp_path, capsys) -> None:
    from sweeps.paper_grid import main

    assert main(["--output", str(tmp_path / "s"), "--cpu-only", "--set", "train.precision=fp16"]) == 2
    assert "train.precision fp16" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_a_second_driver_on_one_sweep_folder_is_refused_with_the_holders_pid(tmp_path, capsys) -> None:
    import socket
    import subprocess
    import sys

    from sweeps.folder import SweepFolder
    from sweeps.paper_grid import main

    output = tmp_path / "sweep"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from sweeps.folder import SweepFolder\n"
         f"with SweepFolder({str(output)!r}).lock():\n    print('held', flush=True); time.sleep(60)"],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert f"held by a running driver (pid {holder.pid} on {socket.gethostname()})" in err
    finally:
        holder.kill()
        holder.wait()
    with SweepFolder(output).lock():  # the lock died with its process
        pass


def test_more_cpus_per_trial_than_the_local_ray_has_are_refused(tmp_path, capsys) -> None:
    from sweeps.paper_grid import main

    args = ["--output", str(tmp_path / "s"), "--num-cpus", "2", "--set", "models.CRIS.resources.frozen.cpu=3"]
    assert main(args) == 2
    assert "models.CRIS.resources.frozen.cpu: 3 CPUs per trial, but the local Ray has 2" in capsys.readouterr().err


def test_a_failed_trials_reason_is_its_errors_last_line() -> None:
    from types import SimpleNamespace

    from sweeps.record import trial_outcome

    error = "Traceback (most recent call last):\n  File ...\nValueError: train_cache: /x holds 64 px images\n"
    trial = SimpleNamespace(checkpoint=None, error_file="/ray/t/error.txt", get_error=lambda: error)
    outcome = trial_outcome(trial, error=True)
    assert outcome.reason.startswith("ValueError: train_cache: /x holds 64 px images")
    assert "/ray/t/error.txt" in outcome.reason


def test_a_sweep_folder_an_older_version_wrote_is_refused_at_once(tmp_path, capsys, caplog) -> None:
    # before one record per cell: chain_state.json, and every trial's config in sweep.json
    from sweeps.__main__ import main as export_main
    from sweeps.paper_grid import main

    old = tmp_path / "old"
    old.mkdir()
    (old / "chain_state.json").write_text("{}")
    (old / "sweep.json").write_text('{"storage": "x", "configs": {}}')
    assert main(["--output", str(old)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(old) in err[0] and "older version" in err[0] and "new --output" in err[0], err
    assert export_main(["export", str(old)]) == 2
    assert "older version" in caplog.text
    assert sorted(p.name for p in old.iterdir()) == ["chain_state.json", "sweep.json"]  # untouched


def test_the_splits_size_is_a_setting_and_an_empty_split_is_refused_by_the_dry_run(tmp_path, capsys) -> None:
    from sweeps.paper_grid import main
    from vlsm.data.phantom import write_demo_data

    demo = write_demo_data(tmp_path / "demo", seed=0, n_patients=6, n_test=2, n_val=1, size=(64, 56))
    args = ["--camus-root", str(demo.camus_root), "--strategies", "real", "--dry-run"]
    assert main(args) == 2  # the paper's 50 validation patients leave nothing to train
    assert "the paper split leaves no train images: of the 4 patients outside the test set" in capsys.readouterr().err
    assert main([*args, "--set", "data.val_patients=1"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("cris-real-unfrozen-p1 "))
    assert row.split()[-2] == "36"  # counted: 3 train patients x 4 images x 3 structures


def test_a_trial_retried_by_the_same_driver_logs_each_epoch_to_mlflow_once(tmp_path) -> None:
    # A trial killed between checkpoints and retried by Ray (max_failures) in the same
    # driver replays the epochs after its last checkpoint through the same tracker.
    from types import SimpleNamespace

    from sweeps.tracking import MLflowTrialCallback, SweepTracker

    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "s", tmp_path)
    records = _cell_records(tmp_path, Cell("CRIS", "real", "frozen", "P1"))
    callback = MLflowTrialCallback(tracker, records)
    trial = SimpleNamespace(config={"cell_id": "cris-real-frozen-p1"}, trial_id="t1")
    for epoch in (1, 2, 3, 2, 3, 4):  # killed after epoch 3, resumed from the epoch-1 checkpoint
        callback.on_trial_result(0, [], trial, {"epoch": epoch, "val_dice": 0.1 * epoch})
    history = tracker.client.get_metric_history(records["cris-real-frozen-p1"].run_id, "val_dice")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]


# --- the dry run's GPU-hours come from measured rates (sweeps/rates.py) -------------------


def _dry_run(tmp_path: Path, *extra: str) -> str:
    """The demo's dry run (no dataset configured), as the command line runs it."""
    from sweeps.options import describe_plan, plan_sweep
    from sweeps.paper_grid import build_parser

    args = ["--output", str(tmp_path / "sweep"), "--dry-run", *extra]
    return describe_plan(plan_sweep(build_parser().parse_args(args)))


def _paper_plan(rates: Path | None, output: Path) -> list[str]:
    """The paper grid's plan at the paper's data sizes, with the rates the dry run loads."""
    from sweeps.rates import load_rates

    spec = load_spec()
    return format_plan(spec, expand_grid(spec), dataset_sizes(spec, None, None), use_gpu=True,
                       rates=load_rates(rates, output)).splitlines()


def _suite_json(path: Path, rows: list[dict], store: dict | None = None) -> Path:
    import json

    from sweeps.rates import SUITE_KIND

    path.write_text(json.dumps({"kind": SUITE_KIND, "device": "NVIDIA H100 80GB HBM3", "quick": False,
                                "throughput": rows, **({"store": store} if store else {})}))
    return path


def _estimate(lines: list[str], cell_id: str) -> str:
    """The est. GPU-h column of a trial's row (trial, upstream, cpu, gpu, items, estimate)."""
    return next(line for line in lines if line.startswith(cell_id + " ")).split()[5]


def test_without_measured_rates_the_dry_run_estimates_nothing_and_says_how_to_measure(tmp_path) -> None:
    spec = load_spec()
    text = format_plan(spec, expand_grid(spec), dataset_sizes(spec, None, None), use_gpu=True)
    lines = text.splitlines()
    assert len(lines) == 92 + 2
    assert "92 trials, 32 chained; about 0.0 GPU-hours" in lines[-1]
    assert "92 trial(s) without a measured rate" in lines[-1] and "bench/gpu_suite.py" in lines[-1]
    assert _estimate(lines, "clipseg-real-unfrozen-p1") == "?"


def test_the_dry_run_reads_rates_from_the_gpu_suites_json_and_names_it(tmp_path) -> None:
    rates = _suite_json(tmp_path / "gpu_suite.json", [
        {"model": "clipseg", "encoder": "unfrozen", "variant": "default", "images_per_s": 2000.0},
        {"model": "clipseg", "encoder": "unfrozen", "variant": "no_vision_stop_early", "images_per_s": 1.0},
        {"model": "cris", "encoder": "frozen", "variant": "default", "images_per_s": 800.0},
    ])
    lines = _paper_plan(rates, tmp_path / "sweep")
    # a whole GPU: 4,800 pairs x 60 epochs / 2,000 images/s = 0.04 GPU-hours (not the ablation's rate)
    assert _estimate(lines, "clipseg-real-unfrozen-p1") == "0.04"
    assert _estimate(lines, "cris-synthetic-frozen-p1") == "0.50"  # 24,000 x 60 / 800
    assert _estimate(lines, "clipseg-real-frozen-p1") == "?"
    assert f"rate clipseg unfrozen: 2000.0 images/s from {rates} (NVIDIA H100 80GB HBM3)" in lines
    assert "46 trial(s) without a measured rate" in lines[-1]
    demo = _dry_run(tmp_path, "--rates", str(rates)).splitlines()  # the option reaches the estimate
    assert f"rate clipseg unfrozen: 2000.0 images/s from {rates} (NVIDIA H100 80GB HBM3)" in demo


def test_frozen_trials_are_estimated_at_the_suites_store_rate_where_they_use_the_store(tmp_path) -> None:
    # frozen trials read the feature store by default: their rate is the suite's store row,
    # the streamed one where its placement says the store would not stay on the GPU
    from sweeps.rates import load_rates

    default = [{"model": m, "encoder": "frozen", "variant": "default", "images_per_s": 100.0} for m in ("clipseg", "cris")]
    store_rows = [{"model": m, "encoder": "frozen", "variant": v, "images_per_s": r}
                  for m in ("clipseg", "cris") for v, r in (("store", 4000.0), ("store_streamed", 400.0))]
    placement = [{"model": "clipseg", "data": "sdm", "on_device": False}, {"model": "cris", "data": "sdm", "on_device": True}]
    rates = _suite_json(tmp_path / "gpu_suite.json", default, {"rows": store_rows, "placement": placement})
    lines = _paper_plan(rates, tmp_path / "sweep")
    assert _estimate(lines, "cris-real-frozen-p1") == "0.02"  # 4,800 x 60 / 4,000 images/s: on the GPU
    assert _estimate(lines, "clipseg-real-frozen-p1") == "0.20"  # 4,800 x 60 / 400: streamed
    assert f"rate cris frozen: 4000.0 images/s from {rates} (NVIDIA H100 80GB HBM3), with the feature store on the GPU" in lines
    assert any(line.startswith("rate clipseg frozen: 400.0") and "streamed from host memory" in line for line in lines)
    without = load_rates(rates, tmp_path / "sweep", feature_store=False)  # train.feature_store: false
    assert without[("cris", "frozen")].images_per_s == 100.0
    demo = _dry_run(tmp_path, "--rates", str(rates), "--set", "train.feature_store=false").splitlines()
    assert any(line.startswith("rate clipseg frozen: 100.0") for line in demo)


def test_the_dry_run_reads_rates_from_an_earlier_sweeps_exports(tmp_path) -> None:
    import pandas as pd

    exports = tmp_path / "earlier" / "exports"
    exports.mkdir(parents=True)
    pd.DataFrame({"trial_id": ["a", "b"], "model": ["CLIPSeg", "CRIS"], "encoder": ["unfrozen", "unfrozen"]}
                 ).to_parquet(exports / "trials.parquet")
    pd.DataFrame({"trial_id": ["a", "a", "a", "b"], "epoch": [1, 2, 3, 1],
                  "images_per_s": [400.0, 500.0, 600.0, 100.0]}).to_parquet(exports / "epochs.parquet")
    lines = _paper_plan(tmp_path / "earlier", tmp_path / "sweep")
    # measured by a trial holding 0.25 GPU: 4,800 x 60 / 500 (the median) s x 0.25 = 0.04 GPU-hours
    assert _estimate(lines, "clipseg-real-unfrozen-p1") == "0.04"
    assert _estimate(lines, "cris-real-unfrozen-p1") == "0.40"  # 4,800 x 60 / 100 x 0.5
    assert any(line.startswith("rate clipseg unfrozen: 500.0 images/s from ") and "median of 4 epochs" in line
               for line in lines)
    # the sweep folder's own exports count too, without --rates
    shutil.copytree(exports, tmp_path / "sweep" / "exports")
    assert _estimate(_paper_plan(None, tmp_path / "sweep"), "clipseg-real-unfrozen-p1") == "0.04"
    assert any("median of 4 epochs" in line for line in _dry_run(tmp_path).splitlines())


def test_rates_a_user_gets_wrong_are_refused_naming_the_option(tmp_path) -> None:
    from sweeps.options import UsageError

    with pytest.raises(UsageError, match="--rates .*missing.json: no such file or folder"):
        _dry_run(tmp_path, "--rates", str(tmp_path / "missing.json"))
    (tmp_path / "other.json").write_text('{"kind": "something else"}')
    with pytest.raises(UsageError, match="other.json: expected the JSON of bench/gpu_suite.py"):
        _dry_run(tmp_path, "--rates", str(tmp_path / "other.json"))
    from sweeps.options import plan_sweep
    from sweeps.paper_grid import build_parser

    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="--rates: only with --dry-run"):
        plan_sweep(build_parser().parse_args(["--output", str(tmp_path / "s"), "--rates", str(tmp_path / "empty")]))
    with pytest.raises(UsageError, match="empty: a folder without exports/epochs.parquet"):
        _dry_run(tmp_path, "--rates", str(tmp_path / "empty"))
