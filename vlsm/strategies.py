"""Training strategies: the strategy axis as a registry, each entry saying what data a
cell trains and validates on and which cell it starts from (docs/design.md, "Registries").

    STRATEGY_REGISTRY["synth-PT:real-FT"].upstream          # "synthetic"
"""

from __future__ import annotations

from dataclasses import dataclass

from vlsm.axes import STRATEGY_FINETUNE, STRATEGY_MIXED, STRATEGY_REAL, STRATEGY_SYNTHETIC
from vlsm.registry import Registry

__all__ = ["REAL", "REAL_AND_SYNTHETIC", "STRATEGY_REGISTRY", "SYNTHETIC", "Strategy",
           "paper_strategies", "strategy_names", "uses_synthetic"]

# What a cell's training or validation data is.
REAL, SYNTHETIC, REAL_AND_SYNTHETIC = "real", "synthetic", "real+synthetic"


@dataclass(frozen=True)
class Strategy:
    """One value of the strategy axis."""

    name: str  # the axis value: "synth-PT:real-FT"
    slug: str  # its part of a cell id: "synth-pt-real-ft"
    train: str  # REAL, SYNTHETIC or REAL_AND_SYNTHETIC (one training set; train.synthetic_share applies)
    val: str  # REAL or SYNTHETIC
    stage: int  # planning order: stages start in turn (upstreams first), longest chains first within one
    upstream: str | None = None  # the strategy whose best checkpoint each cell starts from
    provenance: bool = False  # its cells vary by grid.provenance (prompts saying real or synthetic)
    paper: bool = False  # one of the Synthetic Boost paper's strategies

    def __post_init__(self) -> None:
        if self.train not in (REAL, SYNTHETIC, REAL_AND_SYNTHETIC) or self.val not in (REAL, SYNTHETIC):
            raise ValueError(f"strategy {self.name!r}: train {self.train!r}, val {self.val!r}; expected "
                             f"train in {REAL}, {SYNTHETIC}, {REAL_AND_SYNTHETIC} and val in {REAL}, {SYNTHETIC}")

    @property
    def synthetic_style(self) -> bool:
        """Whether it trains on synthetic images: its prompts are the synthetic style's (no P7)."""
        return self.train != REAL


STRATEGY_REGISTRY: Registry[Strategy] = Registry("strategy")
for _strategy in (
    Strategy(STRATEGY_REAL, "real", train=REAL, val=REAL, stage=1, paper=True),
    Strategy(STRATEGY_SYNTHETIC, "synthetic", train=SYNTHETIC, val=SYNTHETIC, stage=0, paper=True),
    Strategy(STRATEGY_FINETUNE, "synth-pt-real-ft", train=REAL, val=REAL, stage=2, upstream=STRATEGY_SYNTHETIC,
             paper=True),
    Strategy(STRATEGY_MIXED, "real-plus-synthetic", train=REAL_AND_SYNTHETIC, val=REAL, stage=1, provenance=True),
):
    STRATEGY_REGISTRY.register(_strategy)


def strategy_names() -> tuple[str, ...]:
    return STRATEGY_REGISTRY.names()


def paper_strategies() -> tuple[str, ...]:
    """The strategies of the paper's grid (the default of grid.strategies)."""
    return tuple(s.name for s in STRATEGY_REGISTRY if s.paper)


def uses_synthetic(name: str) -> bool:
    """Whether a strategy's cells train or validate on a synthetic source, or start from a
    cell that does: those cells have a synthetic source."""
    strategy = STRATEGY_REGISTRY[name]
    if strategy.synthetic_style or strategy.val == SYNTHETIC:
        return True
    return strategy.upstream is not None and uses_synthetic(strategy.upstream)
