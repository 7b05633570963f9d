"""Measured training rates for the dry run's GPU-hour estimate, and where each came from:
`bench/gpu_suite.py`'s JSON (its keys are defined here), or a sweep's exports. Measured
only: a hand-typed images/s is a guess nobody updates.

    rates = load_rates(Path("bench/results/gpu_suite.json"), Path("runs/paper-grid"))
    rates[("clipseg", "unfrozen")]  # Rate(images_per_s=..., per_share=False, source="...")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vlsm.axes import ENCODERS, IMAGES_PER_S
from vlsm.model_registry import model_key

__all__ = ["DEFAULT_VARIANT", "STORE", "STORE_VARIANTS", "SUITE_KIND", "THROUGHPUT", "Rate", "export_rates",
           "load_rates", "suite_rates"]

SUITE_KIND = "vlsm-gpu-suite"  # the "kind" of bench/gpu_suite.py's JSON
THROUGHPUT = "throughput"  # its section of training rows: model, encoder, variant, images_per_s
DEFAULT_VARIANT = "default"  # the row measured with every TrainConfig switch at its default

Key = tuple[str, str]  # (registry model key, encoder mode)


@dataclass(frozen=True)
class Rate:
    """Training images/s of one (model, encoder) and where it was measured."""

    images_per_s: float
    per_share: bool  # by a trial on its GPU share (a sweep's epochs), not alone on a GPU (the suite)
    source: str


STORE = "store"  # its section of frozen trials with the feature store: rows, placement
STORE_VARIANTS = ("store", "store_streamed")  # the store on the device, streamed from host memory


def suite_rates(path: Path, feature_store: bool = True) -> dict[Key, Rate]:
    """The default-variant rates of a `bench/gpu_suite.py` JSON; ValueError naming the file.
    feature_store: frozen trials' rates are the suite's store rows (streamed where its
    placement says that model's store would not stay on the GPU at the paper's share)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--rates {path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict) or data.get("kind") != SUITE_KIND or not isinstance(data.get(THROUGHPUT), list):
        raise ValueError(f"--rates {path}: expected the JSON of bench/gpu_suite.py (kind {SUITE_KIND!r} "
                         f"with a {THROUGHPUT!r} list), or a sweep folder with exports/")
    where = f"{path} ({data.get('device', '?')}{', --quick' if data.get('quick') else ''})"
    rates = {}
    for row in data[THROUGHPUT]:
        if not isinstance(row, dict) or row.get("variant") != DEFAULT_VARIANT:
            continue
        try:
            key = (model_key(str(row["model"])), str(row["encoder"]))
            rate = float(row[IMAGES_PER_S])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"--rates {path}: a {THROUGHPUT} row without model, encoder and a numeric "
                             f"{IMAGES_PER_S}: {row!r:.120}") from None
        if key[1] in ENCODERS and rate > 0:
            rates[key] = Rate(rate, False, where)
    if feature_store:
        rates.update(_store_rates(data.get(STORE), where))
    return rates


def _store_rates(store: object, where: str) -> dict[Key, Rate]:
    """Frozen rates from the suite's store section (none when it has no usable rows)."""
    if not isinstance(store, dict):
        return {}
    streams = {model_key(str(p.get("model"))) for p in store.get("placement", [])
               if isinstance(p, dict) and p.get("on_device") is False}
    rates = {}
    for row in store.get("rows", []):
        if not isinstance(row, dict) or row.get("variant") not in STORE_VARIANTS or "error" in row:
            continue
        model = model_key(str(row.get("model")))
        wanted = STORE_VARIANTS[1] if model in streams else STORE_VARIANTS[0]
        rate = row.get(IMAGES_PER_S)
        if row["variant"] == wanted and isinstance(rate, int | float) and rate > 0:
            how = "streamed from host memory" if model in streams else "on the GPU"
            rates[(model, "frozen")] = Rate(float(rate), False, f"{where}, with the feature store {how}")
    return rates


def export_rates(folder: Path) -> dict[Key, Rate]:
    """Median training images/s per (model, encoder) of a sweep folder's exports, if any."""
    import pandas as pd

    from analysis.schema import EPOCHS_FILE, TRIALS_FILE, exports_dir

    epochs_file, trials_file = exports_dir(folder) / EPOCHS_FILE, exports_dir(folder) / TRIALS_FILE
    if not (epochs_file.exists() and trials_file.exists()):
        return {}

    epochs = pd.read_parquet(epochs_file).merge(
        pd.read_parquet(trials_file)[["trial_id", "model", "encoder"]], on="trial_id"
    )
    medians = epochs.groupby(["model", "encoder"])[IMAGES_PER_S].median()
    where = f"{epochs_file} (median of {len(epochs)} epochs)"
    return {(model_key(str(model)), str(encoder)): Rate(float(value), True, where)
            for (model, encoder), value in medians.items() if value > 0}


def load_rates(rates: Path | None, output: Path, feature_store: bool = True) -> dict[Key, Rate]:
    """`--rates` (a suite JSON or a sweep folder), then this sweep folder's own exports for
    the pairs it leaves out; feature_store: whether frozen trials use it."""
    found = export_rates(output)
    if rates is None:
        return found
    rates = Path(rates).expanduser()
    if rates.is_dir():
        given = export_rates(rates)
        if not given:
            raise ValueError(f"--rates {rates}: a folder without exports/epochs.parquet and "
                             f"exports/trials.parquet; expected a sweep folder (or its exports/) or "
                             f"bench/gpu_suite.py's JSON")
    else:
        given = suite_rates(rates, feature_store)
    return {**found, **given}
