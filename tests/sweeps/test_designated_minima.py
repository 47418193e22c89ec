"""Which minima of a sweep get the analyses a sweep runs on K designated minima only (``sweeps.pipeline``): the
trained curve (``CurveConfig.trials``) and, by the same rule, the reliability audit."""

from __future__ import annotations

import dataclasses

from optuna.trial import FixedTrial

from landscape_core.config import CurveConfig, get_preset
from sweeps.pipeline import trial_analysis
from sweeps.space import SweepSpace


def _with_curve_trials(k: int | None):
    preset = get_preset("smoke")
    analysis = dataclasses.replace(preset.analysis, curve=dataclasses.replace(preset.analysis.curve, trials=k))
    return dataclasses.replace(preset, analysis=analysis)


def _curved(space: SweepSpace, k: int | None) -> list[dict]:
    preset = _with_curve_trials(k)
    points = space.points()
    chosen = []
    for number, point in enumerate(points):
        trial = FixedTrial(point, number=number)
        for name, value in point.items():  # as the objective does: a trial's params are the ones it suggested
            trial.suggest_categorical(name, [value])
        config = trial_analysis(trial, preset, space)
        assert config.skip - {"curve"} == preset.analysis.skip  # nothing else changes
        if config.runs("curve"):
            chosen.append(point)
    return chosen


def test_a_seeds_sweep_curves_its_first_k_minima_and_none_means_every_one():
    space = SweepSpace(kind="seeds", seeds=(1, 2, 3, 4, 5))
    assert [p["seed"] for p in _curved(space, 2)] == [1, 2]
    assert len(_curved(space, None)) == 5
    assert len(_curved(space, 9)) == 5


def test_an_lr_sweep_spreads_its_k_curves_over_its_learning_rates():
    space = SweepSpace(kind="lr", seeds=(1,), lrs=(0.001, 0.003, 0.01, 0.03, 0.1))
    assert [p["lr"] for p in _curved(space, 3)] == [0.001, 0.01, 0.1]


def test_the_paper_preset_curves_ten_minima_and_the_others_every_one():
    assert get_preset("paper").analysis.curve.trials == 10
    assert get_preset("quick").analysis.curve.trials is None
    assert CurveConfig().trials is None
