"""landscape_core.noise's allocation of draws against images (issue 16): the cheapest allocation against brute force,
the pilot's lower bound against its stated coverage, and the paired-difference estimator against the plain one on
the same noise vectors."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

from landscape_core import noise
from landscape_core.functional import evaluate_examples, flat_params
from landscape_core.sharpness import weight_noise_robustness

pytestmark = pytest.mark.usefixtures("one_thread")


def _variance(between: float, within: float, n: int, total: int, draws: int) -> float:
    return (between + within * (1 / n - 1 / total)) / draws


@pytest.mark.parametrize(
    ("between", "within"),
    [((6.5, 0.004), (58.0, 0.26)), ((2.3e-5, 6e-6), (0.027, 0.022)), ((0.15,), (2.7,)), ((1.0,), (1e-6,))],
)
def test_the_allocation_is_the_cheapest_that_keeps_the_reference_precision(between, within) -> None:
    total, reference, cost = 10_000, 20, 128.0
    got = noise.allocate(between, within, total=total, reference_draws=reference, draw_cost=cost)
    for b, w in zip(between, within):  # the precision of 20 draws on every image, for every metric
        assert _variance(b, w, got.images, total, got.draws) <= b / reference * (1 + 1e-9)
    # brute force over every image count from the smallest it allows (64): none that keeps the precision is cheaper
    cheapest = min(
        math.ceil(reference * max(1 + w * (1 / n - 1 / total) / b for b, w in zip(between, within)) - 1e-9) * (n + cost)
        for n in range(64, total + 1)
    )
    assert got.draws * (got.images + cost) <= 1.1 * cheapest  # powers of two: within 10 % of the exact optimum
    assert got.draws * (got.images + cost) <= reference * (total + cost)  # never dearer than the plain estimator


def test_no_draw_to_draw_spread_keeps_the_plain_estimator() -> None:
    got = noise.allocate((0.0, 1.0), (1.0, 1.0), total=500, reference_draws=7, draw_cost=10)
    assert (got.images, got.draws) == (500, 7)


def test_the_pilots_between_variance_is_a_lower_bound_at_its_confidence() -> None:
    """Simulated pilots of 8 draws on 512 of 10,000 images: the bound stays below the true draw-to-draw variance in
    about 90 % of them (binomial 99.9 % band), and a bound without the chi-square factor would not."""
    gen = torch.Generator().manual_seed(0)
    between, within, n, total, draws, trials = 0.04, 2.0, 512, 10_000, 8, 3000
    sd = math.sqrt(between + within / n * (1 - n / total))
    below = plain_below = 0
    for _ in range(trials):
        deltas = (sd * torch.randn(draws, generator=gen, dtype=torch.float64)).tolist()
        (b,), (w,) = noise.variance_components([deltas], [[within] * draws], images=n, total=total, confidence=0.9)
        below += b <= between
        plain_below += torch.tensor(deltas).var().item() - within / n * (1 - n / total) <= between
    low, high = scipy.stats.binom.ppf([0.0005, 0.9995], trials, 0.9) / trials
    assert low <= below / trials <= high
    assert plain_below / trials < low  # the unadjusted moment estimate is below the truth only about half the time


def test_paired_estimates_on_all_images_are_the_plain_estimates(trained_tiny, learnable_data) -> None:
    like, theta = flat_params(trained_tiny)
    base = evaluate_examples(trained_tiny, learnable_data)
    allocation = noise.Allocation(images=learnable_data[0].shape[0], draws=4, between=(1.0,), within=(1.0,))
    losses, accs = noise.paired_metrics(trained_tiny, like, theta, learnable_data, 0.05, allocation, seed=3, base=base)
    plain_losses, plain_accs = noise.perturbed_metrics(trained_tiny, like, theta, learnable_data, 0.05, draws=4, seed=3)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.tensor(accs), torch.tensor(plain_accs), atol=1e-12, rtol=0)


def test_paired_estimates_on_image_subsets_are_unbiased(trained_tiny, learnable_data) -> None:
    """The same 300 noise vectors, evaluated on all 128 images and on 32 of them per draw: the subset estimates
    differ draw by draw, by no more than sampling allows on average (4 standard errors of the mean difference)."""
    x, y = learnable_data
    data = x, torch.where(torch.arange(len(y)) < len(y) // 4, (y + 1) % 10, y)  # a quarter mislabeled: losses spread
    like, theta = flat_params(trained_tiny)
    base = evaluate_examples(trained_tiny, data)
    assert float(base[0].std()) > 1  # the pairing matters: a mispaired base would bias every subset estimate
    draws = 300
    subset = noise.Allocation(images=32, draws=draws, between=(1.0,), within=(1.0,))
    losses, accs = noise.paired_metrics(trained_tiny, like, theta, data, 0.3, subset, seed=5, base=base)
    full, full_accs = noise.perturbed_metrics(trained_tiny, like, theta, data, 0.3, draws=draws, seed=5)
    for ours, plain in ((losses, full), (accs, full_accs)):
        diff = torch.tensor(ours) - torch.tensor(plain)
        assert float(diff.abs().max()) > 0  # the subsets are subsets
        assert abs(float(diff.mean())) <= 4 * float(diff.std()) / math.sqrt(draws)


def test_an_allocated_noise_curve_meets_the_plain_one(trained_tiny, learnable_data) -> None:
    """Through weight_noise_robustness: the pilot runs (128 images, 40 reference draws), each sigma reports its
    allocation, and every mean is within 4 combined standard errors of the plain estimator's."""
    x, y = learnable_data
    data = (x.repeat(4, 1, 1, 1), y.repeat(4))  # 512 images, so that a pilot of 8 x 64 pays
    pilot = noise.Pilot(draws=8, images=64, draw_cost=16)
    assert pilot.pays(512, 40) and not pilot.pays(64, 5)
    allocated = weight_noise_robustness(trained_tiny, data, sigmas=(0.05, 0.3), draws=40, seed=2, pilot=pilot)
    plain = weight_noise_robustness(trained_tiny, data, sigmas=(0.05, 0.3), draws=40, seed=2)
    assert len(allocated.allocations) == 2 and plain.allocations == ()
    for i in range(2):
        assert len(allocated.losses[i]) == allocated.allocations[i]["draws"]
        combined = math.hypot(allocated.loss_stderr[i], plain.loss_stderr[i])
        assert abs(allocated.loss_mean[i] - plain.loss_mean[i]) <= 4 * combined
    small = weight_noise_robustness(trained_tiny, learnable_data, sigmas=(0.3,), draws=2, seed=2, pilot=pilot)
    assert small.allocations == ()  # a pilot dearer than a quarter of the plain estimate does not run
