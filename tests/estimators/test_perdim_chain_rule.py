"""Why MI-PRUN's numbers are read per coordinate: on a Gauss-Markov chain of residual-like states, the
per-coordinate MI of a run of blocks follows the scalar chain rule I_run = -½ log(1 - Π ρ_l²), with
ρ_l² = 1 - exp(-2 I_l) from each block's own MI. Issue #21 reports that MI-PRUN's Table 6 run values obey
exactly this relation (to ~1 % away from the last block); a multivariate MI of whole states has no such
scalar form. The table's own values could not be obtained offline (docs/REFERENCE-METHODS.md), so this test
checks the relation the reading rests on, with ``mi.perdim`` itself, against the closed form."""

from __future__ import annotations

import numpy as np
import pytest

from blockprune import estimators

RHOS = [0.95, 0.8, 0.9, 0.85]  # per-block correlation of each coordinate with itself one block later


def _chain(n: int, d: int, seed: int) -> list[np.ndarray]:
    """States h_0..h_L of a chain h_l = ρ_l h_{l-1} + sqrt(1 - ρ_l²) ε_l, every coordinate unit-variance."""
    rng = np.random.default_rng(seed)
    h = [rng.standard_normal((n, d))]
    for rho in RHOS:
        h.append(rho * h[-1] + np.sqrt(1 - rho**2) * rng.standard_normal((n, d)))
    return h


def chain_rule(single: list[float]) -> float:
    """Predicted MI of a run from its blocks' MI, through the scalar Gaussian chain rule."""
    prod = float(np.prod([1.0 - np.exp(-2.0 * i) for i in single]))
    return -0.5 * np.log(1.0 - prod)


def test_run_mi_follows_the_chain_rule_of_its_blocks() -> None:
    """Single draws at N = 20,000, d = 4: one coordinate's KSG s.d. is ≈ 0.008 nats (measured in
    tests/estimators/spread_measurements.py), the mean of 4 ≈ 0.004; the 5 % bar is ≥ 0.015 nats here,
    ≥ 3.5 s.d. for every run."""
    h = _chain(20_000, 4, seed=7)
    mi = estimators.get("mi.perdim")
    single = [mi(h[i], h[i + 1]) for i in range(len(RHOS))]
    for i, rho in enumerate(RHOS):  # each block against the closed form -½ log(1 - ρ²)
        assert single[i] == pytest.approx(-0.5 * np.log(1 - rho**2), abs=0.03)
    for a in range(len(RHOS)):
        for b in range(a + 1, len(RHOS)):
            run = mi(h[a], h[b + 1])
            assert run == pytest.approx(chain_rule(single[a : b + 1]), rel=0.05), (a, b)
    # and the run values fall with run length, as Table 6 reports
    assert mi(h[0], h[4]) < mi(h[0], h[3]) < mi(h[0], h[2]) < mi(h[0], h[1])


def test_chain_rule_closed_form() -> None:
    """The predictor itself: for exact per-block MI it returns the run's exact MI."""
    exact = [-0.5 * np.log(1 - r**2) for r in RHOS]
    assert chain_rule(exact) == pytest.approx(-0.5 * np.log(1 - np.prod(np.square(RHOS))), rel=1e-12)
