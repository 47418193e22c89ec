"""tracking.report: the sweep report (report.html) with the paper's six figures over the population and the claims
table; the criteria on hand-made populations, the bands against the t-interval, the file on a real sweep."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import pytest
from scipy import stats

from landscape_core import keys
from landscape_core.config import TrainConfig
from landscape_core.plots.population import mean_band
from tests.sweeps.conftest import run_cli
from tracking.population import Population, PopulationRun
from tracking.report import claims


def population_of(values: dict[str, list[float]]) -> Population:
    n = len(next(iter(values.values())))
    runs = [
        PopulationRun(f"r{i}", "s", i, i + 1, 0.01, {key: column[i] for key, column in values.items()})
        for i in range(n)
    ]
    return Population(runs, source="hand-made")


def by_claim(population: Population) -> dict[str, object]:
    return {c.claim: c for c in claims(population, None)}


def test_mean_band_is_the_t_interval_of_the_mean():
    curves = np.array([[1.0, 10.0], [3.0, 14.0], [2.0, 12.0]])
    mean, low, high = mean_band(curves)
    for j in range(2):
        want = stats.t.interval(0.95, 2, loc=curves[:, j].mean(), scale=stats.sem(curves[:, j]))
        assert (low[j], high[j]) == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(mean, [2.0, 12.0])
    single = mean_band([[5.0, 6.0]])
    assert np.array_equal(single[0], single[1]) and np.array_equal(single[0], single[2])


def test_the_claims_follow_their_stated_criteria():
    rng = np.random.default_rng(0)
    n = 12
    large = population_of(
        {
            keys.LAMBDA_MAX: list(10 + 5 * rng.random(n)),  # CV ~ 0.1: different sharpness
            keys.barrier("test", "loss"): list(1.5 + 0.1 * rng.standard_normal(n)),  # large raw barriers
            keys.barrier("test", "loss", aligned=True): list(0.01 + 0.005 * rng.standard_normal(n)),  # none aligned
            keys.perturb("test_loss_delta", 0.01): list(0.002 + 0.001 * rng.random(n)),
            keys.perturb("test_acc", 0.10): list(0.35 + 0.02 * rng.standard_normal(n)),
        }
    )
    verdicts = {claim: c.verdict for claim, c in by_claim(large).items()}
    assert verdicts == {
        "Different seeds reach minima of different sharpness": "supported",
        "Flatter minima generalize better": "no evidence",  # no correlation report given
        "Minima from different seeds are separated by large barriers (line)": "supported",
        "Minima from different seeds are separated by large barriers (line, weight-matched)": "refuted",
        "The paper's reading: minima are isolated (no low path between them)": "refuted",  # the aligned line is low
        "SGD reaches flatter minima than full-batch GD at equal train loss": "no evidence",  # no optimizer axis
        "Minima are robust to small weight noise": "supported",
        "Minima collapse under weight noise of sigma 0.1": "supported",
        "Sharpness follows the SGD noise scale (larger lr / B, flatter minimum)": "no evidence",  # no noise scale
    }
    same = population_of({keys.LAMBDA_MAX: list(13 + 1e-4 * rng.random(n))})
    spread = by_claim(same)["Different seeds reach minima of different sharpness"]
    assert spread.verdict == "refuted" and spread.high < 0.05
    lam = np.array(same.column(keys.LAMBDA_MAX))
    assert spread.value == pytest.approx(lam.std(ddof=1) / lam.mean(), rel=1e-12)
    unknown = by_claim(population_of({keys.LAMBDA_MAX: [13.0, 13.5]}))
    assert all(c.verdict == "no evidence" for c in unknown.values())
    assert math.isnan(unknown["Minima collapse under weight noise of sigma 0.1"].value)


def test_the_isolated_minima_reading_follows_the_lowest_path_and_names_it():
    rng = np.random.default_rng(2)
    n = 10
    high = list(1.2 + 0.1 * rng.standard_normal(n))
    columns = {keys.barrier("test", "loss"): high, keys.barrier("test", "loss", aligned=True): high}
    isolated = by_claim(population_of({**columns, keys.curve_barrier("test", "loss"): high}))
    reading = "The paper's reading: minima are isolated (no low path between them)"
    assert isolated[reading].verdict == "supported"
    low = list(0.02 + 0.01 * rng.random(n))
    connected = by_claim(population_of({**columns, keys.curve_barrier("test", "loss"): low}))[reading]
    assert connected.verdict == "refuted" and "trained curve" in connected.note
    assert connected.value == pytest.approx(np.mean(low))
    assert "Minima from different seeds are separated by large barriers (trained curve)" in by_claim(
        population_of({**columns, keys.curve_barrier("test", "loss"): low})
    )


def test_sgd_versus_gd_is_the_paired_difference_over_seeds_with_a_t_interval():
    """Pairs: the gd and the sgd run of one config but for the optimizer, both at the stop loss."""
    rng = np.random.default_rng(3)
    runs, gd_minus_sgd = [], []

    def run(optimizer: str, seed: int, lam: float, *, reached: float = 1.0, lr: str = "0.05") -> PopulationRun:
        metrics = {keys.LAMBDA_MAX: lam, keys.ADAPTIVE_SHARPNESS_LINF: lam / 100, keys.FINAL_TRAIN_LOSS: 0.35}
        metrics[keys.REACHED_STOP_LOSS] = reached
        params = {"optimizer": optimizer, "seed": str(seed), "lr": lr}
        return PopulationRun(f"{optimizer}{seed}{lr}", "s", len(runs), seed, float(lr), metrics, params=params)

    for seed in range(1, 7):
        sgd = 10 + rng.random()
        gd = sgd + 2 + 0.3 * rng.standard_normal()
        gd_minus_sgd.append(gd - sgd)
        runs += [run("sgd", seed, sgd), run("gd", seed, gd), run("sam", seed, sgd - 1)]
    # not pairs: a gd run at another lr, and a gd run that never reached the stop loss
    runs += [run("gd", 1, 99.0, lr="0.1"), run("gd", 7, 99.0, reached=0.0), run("sgd", 7, 1.0)]
    claim = {c.claim: c for c in claims(Population(runs, source="hand-made"), None)}[
        "SGD reaches flatter minima than full-batch GD at equal train loss"
    ]
    want = stats.t.interval(0.95, 5, loc=np.mean(gd_minus_sgd), scale=stats.sem(gd_minus_sgd))
    assert claim.value == pytest.approx(np.mean(gd_minus_sgd)) and (claim.low, claim.high) == pytest.approx(want)
    assert claim.verdict == "supported" and "n = 6 seeds (of 7: both at the stop loss)" in claim.note
    # lambda_max alone is not enough: when the rescaling-invariant sharpness does not differ, nothing is decided
    for r in runs:
        r.metrics[keys.ADAPTIVE_SHARPNESS_LINF] = 0.01 + 1e-3 * rng.standard_normal()
    claim = {c.claim: c for c in claims(Population(runs, source="hand-made"), None)}[
        "SGD reaches flatter minima than full-batch GD at equal train loss"
    ]
    assert claim.verdict == "no evidence" and "not decided beyond parametrization" in claim.note


def test_the_noise_scale_claim_is_spearmans_rho_with_a_fisher_z_interval():
    rng = np.random.default_rng(1)
    scale = np.repeat([1e-4, 3e-4, 1e-3, 3e-3], 4)
    lam = 50 - 4e3 * scale + rng.normal(0, 0.5, scale.size)  # flatter at a larger scale
    claim = by_claim(population_of({keys.NOISE_SCALE: list(scale), keys.LAMBDA_MAX: list(lam)}))[
        "Sharpness follows the SGD noise scale (larger lr / B, flatter minimum)"
    ]
    rho = stats.spearmanr(scale, lam).statistic
    half = 1.959964 * math.sqrt(1.06 / (scale.size - 3))
    assert claim.value == pytest.approx(rho) and claim.verdict == "supported"
    assert (claim.low, claim.high) == pytest.approx(
        (math.tanh(math.atanh(rho) - half), math.tanh(math.atanh(rho) + half))
    )
    flipped = by_claim(population_of({keys.NOISE_SCALE: list(scale), keys.LAMBDA_MAX: list(-lam)}))
    assert flipped["Sharpness follows the SGD noise scale (larger lr / B, flatter minimum)"].verdict == "refuted"


def test_the_noise_scale_is_lr_over_batch_with_the_momentum_correction():
    config = TrainConfig(lr=0.02, batch_size=64, momentum=0.9)
    assert config.noise_scale == pytest.approx(0.02 / (64 * 0.1))
    assert TrainConfig(lr=0.02, batch_size=64, momentum=0.0).noise_scale == pytest.approx(0.02 / 64)


def test_the_sweep_logs_a_self_contained_report_with_the_six_figures(seed_sweep, tmp_path):
    root, result = seed_sweep
    assert "report.html logged to parent run" in result.stdout
    out = tmp_path / "report.html"
    cli = run_cli("tracking.report", "--root", str(root), "--study", "seeds-smoke", "--out", str(out))
    assert cli.returncode == 0, cli.stdout + cli.stderr
    page = out.read_text()
    images = re.findall(r'<img alt="(Figure \d)[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [name for name, _ in images] == [f"Figure {i}" for i in range(1, 7)]
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for _, data in images)
    assert "http://" not in page and "https://" not in page and "<script" not in page  # nothing to fetch
    verdicts = re.findall(r'<td class="(supported|refuted|no-evidence)">', page)
    assert len(verdicts) == 11  # 3 + the 4 paths and their reading + SGD vs GD + 2 on weight noise
    assert "smoke" in page and "versions.torch" in page


def test_the_report_command_refuses_a_file_that_is_not_html(tmp_path):
    result = run_cli("tracking.report", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "report.pdf"))
    assert result.returncode == 2 and "Expected `--out` ending in .html" in result.stdout
