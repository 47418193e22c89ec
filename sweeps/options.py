"""What a sweep command decided: the population, the protocol and where results go."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tracking.plan import AnalysisPlan

if TYPE_CHECKING:
    from landscape_core.config import Preset
    from sweeps.space import SweepSpace

__all__ = ["SweepOptions"]


@dataclass(frozen=True, kw_only=True)
class SweepOptions:
    """Everything a sweep command decided, validated by the CLI (``sweeps.cli``) before anything is written."""

    space: SweepSpace
    preset: Preset
    study_name: str
    experiment: str
    root: str = "mlruns"
    storage: str | None = None
    tracking_uri: str | None = None
    data_dir: str | None = None
    heartbeat: int | None = None
    max_pairs: int = 45
    workers: int = 1
    batch_trials: int = 1
    #: The analysis plan, declared on the parent run before the first trial (``tracking.plan``).
    plan: AnalysisPlan = field(default_factory=AnalysisPlan)
