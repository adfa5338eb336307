"""Property tests of the sparse edit's closed form on small random problems (float64)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from msafety_bench.editors.sparse import EditProblem, safety_neuron_mask

shapes = st.tuples(st.integers(3, 12), st.integers(2, 6), st.integers(1, 5), st.integers(2, 12), st.integers(1, 4))


def make(seed, n, d, m, ns, gamma=1.0, lam=0.01, conditioning=1.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.geomspace(1, conditioning, d)
    Xs = rng.normal(size=(ns, d)) * np.geomspace(1, conditioning, d)
    D = rng.normal(size=(n, m))
    return EditProblem(X, D, Xs, gamma, lam)


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(0, 2**31))
def test_rank_bound_and_full_rank_equals_ridge(shape, seed):
    n, d, m, ns, r = shape
    p = make(seed, n, d, m, ns)
    dW = p.solve(r)
    assert dW.shape == (d, m)
    assert torch.linalg.matrix_rank(dW, rtol=1e-9) <= min(r, d, m)
    full = p.solve(max(d, m))
    assert torch.allclose(full, p.ridge(), atol=1e-9, rtol=1e-7)


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(0, 2**31))
def test_no_worse_than_plain_truncation_of_the_ridge_solution(shape, seed):
    n, d, m, ns, r = shape
    p = make(seed, n, d, m, ns)
    U, S, Vh = torch.linalg.svd(p.ridge(), full_matrices=False)
    k = min(r, len(S))
    truncated = (U[:, :k] * S[:k]) @ Vh[:k]
    assert p.objective(p.solve(r)) <= p.objective(truncated) + 1e-10


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 2**31), st.floats(1e-3, 0.3))
def test_no_worse_than_rank_r_perturbations_of_its_factors(shape, seed, eps):
    n, d, m, ns, r = shape
    p = make(seed, n, d, m, ns)
    dW = p.solve(r)
    U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
    k = min(r, len(S))
    A, B = U[:, :k] * S[:k], Vh[:k]
    best = p.objective(dW)
    gen = torch.Generator().manual_seed(seed % 2**31)
    for _ in range(5):
        E1 = torch.randn(A.shape, generator=gen, dtype=torch.float64)
        E2 = torch.randn(B.shape, generator=gen, dtype=torch.float64)
        other = (A + eps * E1) @ (B + eps * E2)  # rank <= r by construction
        assert best <= p.objective(other) + 1e-10


def test_no_worse_than_random_rank_r_matrices():
    p = make(7, 40, 10, 6, 30)
    best = p.objective(p.solve(2))
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        other = torch.randn(10, 2, generator=gen, dtype=torch.float64) @ torch.randn(2, 6, generator=gen, dtype=torch.float64)
        assert best < p.objective(other * 0.1)


def test_harmless_movement_vanishes_as_gamma_grows():
    shifts = []
    for gamma in (0.0, 1.0, 10.0, 100.0, 1e4):
        p = make(3, 20, 8, 4, 6, gamma=gamma, lam=1e-6)
        shifts.append(float((p.Xs @ p.solve(4)).norm()))
    assert all(b < a for a, b in zip(shifts, shifts[1:])), shifts
    assert shifts[-1] < 1e-2 * shifts[0]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.floats(1e-8, 1e-2))
def test_finite_on_ill_conditioned_rank_deficient_inputs(seed, lam):
    # n < d and columns scaled over 12 orders of magnitude: Q is only invertible thanks to lambda.
    p = make(seed, 4, 16, 3, 2, lam=lam, conditioning=1e-12)
    dW = p.solve(2)
    assert torch.isfinite(dW).all()
    assert p.objective(dW) <= p.objective(torch.zeros_like(dW)) + 1e-12


def test_safety_neuron_criteria_union():
    torch.manual_seed(0)
    harmless = torch.randn(200, 1, 50)
    harmful = torch.randn(200, 1, 50)
    harmful[:, 0, 7] += 3.0  # large gap: both criteria
    harmful[:, 0, 9] += 1.2  # Cohen's d > 1 with a modest gap
    mask = safety_neuron_mask(harmful, harmless, tau_mag=2.0, tau_stat=1.0)
    assert mask[0, 7] and mask[0, 9]
    assert mask.sum() <= 4
    harmful[:, 0, 11] -= 3.0  # more active on harmless prompts: only the two-sided variant counts it
    assert not safety_neuron_mask(harmful, harmless, 2.0, 1.0)[0, 11]
    assert safety_neuron_mask(harmful, harmless, 2.0, 1.0, two_sided=True)[0, 11]
