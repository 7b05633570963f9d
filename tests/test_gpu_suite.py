"""bench/gpu_suite.py runs its whole code on CPU (--device cpu --quick) and writes every
section, in the form the dry run reads (`sweeps.rates`)."""

from __future__ import annotations

import json

import pytest

from bench.gpu_suite import GOALS, main, peak_tflops, with_mfu
from sweeps.rates import SUITE_KIND, THROUGHPUT, load_rates

SECTIONS = ("throughput", "store", "overhead", "packed", "projection", "skipped", "goals")


@pytest.mark.slow  # about a minute on 2 cores: 4 processes start torch for the packed trials
def test_quick_cpu_run_writes_every_section_and_the_dry_run_reads_it(tmp_path) -> None:
    out = tmp_path / "gpu_suite.json"
    result = main(["--device", "cpu", "--quick", "--models", "clipseg", "--steps", "1", "--warmup", "1",
                   "--out", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result))  # what it returned is what it wrote
    assert data["kind"] == SUITE_KIND and data["quick"] is True and data["device"].startswith("cpu")
    assert all(section in data for section in SECTIONS)
    rows = {(r["model"], r["encoder"], r["variant"]): r for r in data[THROUGHPUT]}
    for variant in ("default", "no_vision_stop_early", "eager_attention", "no_fused_adamw", "fp32"):
        for encoder in ("frozen", "unfrozen"):
            row = rows[("clipseg", encoder, variant)]
            assert row["images_per_s"] > 0 and row["flop_per_image"] > 0 and row["mfu"] is None  # no CPU peak
    assert ("clipseg", "unfrozen", "channels_last") not in rows  # a CRIS-only switch
    # the vision tower stopped early does less work (the tiny tower has no layer after its last tap,
    # so the counts are equal here; at full size it skips 2 of 12 layers)
    assert rows[("clipseg", "unfrozen", "default")]["flop_per_image"] <= \
        rows[("clipseg", "unfrozen", "no_vision_stop_early")]["flop_per_image"]
    stores = {(r["encoder"], r["variant"]): r for r in data["store"]["rows"] if r["model"] == "clipseg"}
    assert set(stores) == {("frozen", "store"), ("frozen", "store_streamed")}  # frozen trials only
    assert all(r["images_per_s"] > 0 for r in stores.values())
    store = {"frozen": stores[("frozen", "store")]}
    # where the paper's frozen share puts each training store: CPU has no device budget
    placement = {p["data"]: p for p in data["store"]["placement"]}
    assert set(placement) == {"camus", "sdm"} and all(p["on_device"] is None for p in placement.values())
    per_image = store["frozen"]["store_bytes_per_image"]
    assert placement["camus"]["store_gb"] == per_image * 1600 / 1e9 and placement["camus"]["share"] == 0.125
    assert data["projection"]["with_store"]["gpu_hours"] > 0
    assert {(r["encoder"], r["data"]) for r in data["overhead"]} == {
        (e, d) for e in ("frozen", "unfrozen") for d in ("camus", "sdm")}
    assert all(0 < r["overhead_share"] < 1 for r in data["overhead"])
    assert [r["trials"] for r in data["packed"]] == [1, 2, 4]
    assert all(r["aggregate_images_per_s"] > 0 and not r["errors"] for r in data["packed"])
    assert data["projection"]["trials"] == 92
    assert data["projection"]["without_store"]["trials_without_rate"] == 46  # CRIS was left out
    assert any("compile" in line for line in data["skipped"])
    goals = {g["goal"]: g for g in data["goals"]}
    assert list(goals) == [name for name, _, _ in GOALS]
    assert goals["CLIPSeg unfrozen MFU"]["value"] is None and goals["CLIPSeg unfrozen MFU"]["met"] is None  # no peak
    assert goals["CRIS frozen with store / unfrozen images/s"]["value"] is None  # CRIS was left out
    store_ratio = goals["CLIPSeg frozen with store / without (CPU goal)"]
    assert store_ratio["value"] == store["frozen"]["images_per_s"] / rows[("clipseg", "frozen", "default")]["images_per_s"]
    assert store_ratio["met"] == (store_ratio["value"] >= 5.0)
    assert goals["largest per-epoch overhead share"]["value"] == max(r["overhead_share"] for r in data["overhead"])
    rates = load_rates(out, tmp_path / "no-sweep")
    assert set(rates) == {("clipseg", "frozen"), ("clipseg", "unfrozen")}
    assert "--quick" in rates[("clipseg", "unfrozen")].source


def test_mfu_uses_the_gpus_dense_bf16_peak_or_is_left_blank() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert peak_tflops("NVIDIA H100 NVL", None) == peak_tflops("NVIDIA H200 NVL", None) == 835.0
    assert peak_tflops("NVIDIA H200", None) == peak_tflops("NVIDIA GH200 480GB", None) == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", None) == 312.0
    assert peak_tflops("NVIDIA A10G", None) is None
    assert peak_tflops("NVIDIA A10G", 70.0) == 70.0
    row = with_mfu({"images_per_s": 1000.0, "flop_per_image": 228e9}, 989.0)
    assert row["tflops_per_s"] == pytest.approx(228.0) and row["mfu"] == pytest.approx(228 / 989)
    assert with_mfu({"images_per_s": 1000.0, "flop_per_image": 228e9}, None)["mfu"] is None


def test_a_setup_that_fails_is_an_error_row_and_the_suite_goes_on(monkeypatch) -> None:
    # a compile or kernel error in one setup must not lose the measurements before it
    import torch

    from bench import gpu_measure

    def broken(*args, **kwargs):
        raise RuntimeError("inductor: no C++ compiler\nlong trace")

    monkeypatch.setattr(gpu_measure, "_build", broken)
    row = gpu_measure.measure_training(gpu_measure.Setup("clipseg", False, 2, "compile"), torch.device("cpu"),
                                       steps=1, warmup=0, full_size=False)
    assert row["error"] == "RuntimeError: inductor: no C++ compiler"
    assert row["variant"] == "compile" and "images_per_s" not in row


def test_a_packed_trial_that_never_answers_is_stopped_and_reported() -> None:
    import multiprocessing
    import time

    from bench.gpu_suite import _collect

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    hung = ctx.Process(target=time.sleep, args=(60,))
    hung.start()
    results.put({"images": 4, "images_per_s": 2.0})  # the other trial answered
    started = time.monotonic()
    trials = _collect(results, [hung, hung], timeout_s=1.0)
    assert trials[0] == {"images": 4, "images_per_s": 2.0}
    assert trials[1] == {"error": "no result within --packed-timeout-s 1"}
    assert not hung.is_alive() and time.monotonic() - started < 30


def test_a_packed_trial_that_fails_to_start_reports_and_frees_the_others(monkeypatch) -> None:
    # a CUDA start-up error (the memory cap, the context) must reach the parent and break
    # the barrier, or the other trials wait there for --packed-timeout-s
    import torch

    from bench import gpu_measure
    from vlsm import trainable

    def no_gpu(resources):
        raise RuntimeError("CUDA error: no kernel image is available")

    monkeypatch.setattr(trainable, "limit_to_share", no_gpu)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # a worker's, not this test process's

    class Barrier:
        aborted = False

        def wait(self):
            raise AssertionError("never reached")

        def abort(self):
            Barrier.aborted = True

    results = []
    gpu_measure.packed_worker(gpu_measure.Setup("clipseg", False, 2), "cuda", 0.25, 1, 1, 0, False, Barrier(),
                              type("Queue", (), {"put": staticmethod(results.append)}))
    assert results == [{"model": "clipseg", "encoder": "unfrozen", "batch_size": 2, "variant": "default",
                        "error": "RuntimeError: CUDA error: no kernel image is available"}]
    assert Barrier.aborted


def test_the_projection_uses_the_streamed_rate_where_the_store_would_not_fit() -> None:
    from bench.gpu_suite import projection

    rows = [{"model": m, "encoder": e, "variant": "default", "images_per_s": 100.0}
            for m in ("clipseg", "cris") for e in ("frozen", "unfrozen")]
    store_rows = [{"model": m, "encoder": "frozen", "variant": v, "images_per_s": r}
                  for m in ("clipseg", "cris") for v, r in (("store", 1000.0), ("store_streamed", 50.0))]
    kept = [{"model": m, "data": d, "on_device": True} for m in ("clipseg", "cris") for d in ("camus", "sdm")]
    sdm_streams = [{**p, "on_device": p["data"] != "sdm" or p["model"] != "clipseg"} for p in kept]
    on_device = projection(rows, {"rows": store_rows, "placement": kept})
    streaming = projection(rows, {"rows": store_rows, "placement": sdm_streams})
    assert on_device == projection(rows, {"rows": store_rows, "placement": []})  # nothing streams
    assert streaming["without_store"] == on_device["without_store"]
    assert streaming["with_store"]["gpu_hours"] > on_device["with_store"]["gpu_hours"]
    assert on_device["with_store"]["gpu_hours"] < on_device["without_store"]["gpu_hours"]
