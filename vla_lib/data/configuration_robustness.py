"""The `closed_loop.robustness` section: which perturbations the closed-loop robustness matrix runs
(vla_lib/evaluation/robustness.py). The families and their levels are `data/perturbations.py`'s PERTURBATIONS, the
one place a family is added: with `families` empty every family there joins the matrix by itself."""
from __future__ import annotations

from dataclasses import dataclass, field

from vla_lib.data.perturbations import PERTURBATIONS
from vla_lib.errors import ConfigError

NOMINAL = "nominal"  # the matrix's first row: the run's own closed loop, nothing perturbed


@dataclass
class RobustnessConfig:
    enabled: bool = False
    families: list[str] = field(default_factory=list)  # empty: every family of PERTURBATIONS, in its order
    levels: dict[str, list] = field(default_factory=dict)  # family -> the levels to run (default below)
    # a family not named in `levels` runs its first this many levels (mild to severe order); 0 = all of them
    levels_per_family: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        unknown = [f for f in [*self.families, *self.levels] if f not in PERTURBATIONS]
        unknown += [f"{f}/{lv}" for f, lvs in self.levels.items() if f in PERTURBATIONS
                    for lv in lvs if lv not in PERTURBATIONS[f]]
        if unknown:
            raise ConfigError(f"closed_loop.robustness: unknown perturbation(s) {', '.join(unknown)} (known: "
                              + "; ".join(f"{f}: {', '.join(lv)}" for f, lv in PERTURBATIONS.items()) + ")")
        if self.levels_per_family < 0:
            raise ConfigError(f"closed_loop.robustness.levels_per_family must be >= 0, got {self.levels_per_family}")

    def conditions(self) -> list[tuple[str, str]]:
        """(family, level) of every perturbed cell, in PERTURBATIONS' order unless `families` orders them."""
        out = []
        for family in self.families or list(PERTURBATIONS):
            levels = list(PERTURBATIONS[family])
            chosen = self.levels.get(family) or levels[:self.levels_per_family or None]
            out += [(family, level) for level in chosen]
        return out
