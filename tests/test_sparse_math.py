"""The sparse edit's method pinned down on small problems: neuron criteria on planted neurons, the
closed form against an independent implementation, the null-space constraint, the ridge scale.

Every test here fails for at least one wrong implementation named in DEVELOPERS.md (tools/mutate_sparse.py
applies them)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from msafety_bench.editors.sparse import EditProblem, SparseConfig, SparseEditor, null_space_basis, safety_neuron_mask

shapes = st.tuples(st.integers(3, 12), st.integers(2, 6), st.integers(1, 5), st.integers(2, 12), st.integers(1, 4))


def arrays(seed, n, d, m, ns, conditioning=1.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.geomspace(1, conditioning, d)
    Xs = rng.normal(size=(ns, d)) * np.geomspace(1, conditioning, d)
    return X, rng.normal(size=(n, m)), Xs


def make(seed, n, d, m, ns, gamma=1.0, lam=0.01, conditioning=1.0, **kw):
    return EditProblem(*arrays(seed, n, d, m, ns, conditioning), gamma, lam, **kw)


# -- an independent implementation (numpy, symmetric square root instead of Cholesky) ------------------
def objective(X, D, Xs, gamma, lam_abs, dW):
    dW = np.asarray(dW, dtype=np.float64)
    return (((X @ dW - D) ** 2).sum() / len(X) + gamma * ((Xs @ dW) ** 2).sum() / len(Xs)
            + lam_abs * (dW ** 2).sum())


def lam_abs_of(X, lam):
    return lam * np.trace(X.T @ X / len(X)) / X.shape[1]


def reference(X, D, Xs, gamma, lam, rank, basis=None):
    """argmin over rank(dW) <= rank (and dW = basis V) of the objective: whiten with Q^(1/2), truncate."""
    d = X.shape[1]
    B = np.eye(d) if basis is None else np.asarray(basis)
    Q = X.T @ X / len(X) + gamma * Xs.T @ Xs / len(Xs) + lam_abs_of(X, lam) * np.eye(d)
    Qb, rhs = B.T @ Q @ B, B.T @ X.T @ D / len(X)
    w, V = np.linalg.eigh(Qb)
    root, root_inv = (V * np.sqrt(w)) @ V.T, (V / np.sqrt(w)) @ V.T
    U, S, Vt = np.linalg.svd(root @ np.linalg.solve(Qb, rhs), full_matrices=False)
    r = min(rank, len(S))
    return B @ root_inv @ ((U[:, :r] * S[:r]) @ Vt[:r])


def ridge_by_lstsq(X, D, Xs, gamma, lam):
    """The unconstrained minimiser as one stacked least-squares problem."""
    d = X.shape[1]
    A = np.vstack([X / np.sqrt(len(X)), np.sqrt(gamma / len(Xs)) * Xs, np.sqrt(lam_abs_of(X, lam)) * np.eye(d)])
    b = np.vstack([D / np.sqrt(len(X)), np.zeros((len(Xs) + d, D.shape[1]))])
    return np.linalg.lstsq(A, b, rcond=None)[0]


# -- the closed form ------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(0, 2**31))
def test_rank_bound_and_full_rank_equals_the_stacked_least_squares_solution(shape, seed):
    n, d, m, ns, r = shape
    X, D, Xs = arrays(seed, n, d, m, ns)
    p = EditProblem(X, D, Xs, 1.0, 0.01)
    dW = p.solve(r)
    assert dW.shape == (d, m)
    assert torch.linalg.matrix_rank(dW, rtol=1e-9) <= min(r, d, m)
    expected = ridge_by_lstsq(X, D, Xs, 1.0, 0.01)
    assert np.allclose(p.solve(max(d, m)).numpy(), expected, atol=1e-9, rtol=1e-7)
    assert np.allclose(p.ridge().numpy(), expected, atol=1e-9, rtol=1e-7)


def test_rank_constrained_solution_on_a_fixed_case_beats_plain_truncation_measurably():
    """r < min(d, m): the whitened solution equals the independent one, and truncating the ridge
    solution without whitening is clearly worse (it is what a wrong closed form would return)."""
    X, D, Xs = arrays(11, 40, 10, 6, 30, conditioning=0.05)
    p = EditProblem(X, D, Xs, 1.0, 0.01)
    dW = p.solve(2).numpy()
    expected = reference(X, D, Xs, 1.0, 0.01, 2)
    assert np.allclose(dW, expected, atol=1e-10, rtol=1e-8)
    M = ridge_by_lstsq(X, D, Xs, 1.0, 0.01)
    U, S, Vt = np.linalg.svd(M, full_matrices=False)
    truncated = (U[:, :2] * S[:2]) @ Vt[:2]
    lam_abs = lam_abs_of(X, 0.01)
    best, trunc, zero = (objective(X, D, Xs, 1.0, lam_abs, w) for w in (dW, truncated, np.zeros_like(dW)))
    assert best < trunc - 0.01 * (zero - best), (best, trunc, zero)


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


def test_harmless_movement_vanishes_as_gamma_grows():
    shifts = []
    for gamma in (0.0, 1.0, 10.0, 100.0, 1e4):
        p = make(3, 20, 8, 4, 6, gamma=gamma, lam=1e-6)
        shifts.append(float((p.Xs @ p.solve(4)).norm()))
    assert all(b < a for a, b in zip(shifts, shifts[1:])), shifts
    assert shifts[-1] < 1e-2 * shifts[0]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.floats(1e-8, 1e-2))
def test_ill_conditioned_rank_deficient_inputs_still_give_the_optimum(seed, lam):
    # n < d and columns scaled over 12 orders of magnitude: Q is only invertible thanks to lambda.
    X, D, Xs = arrays(seed, 4, 16, 3, 2, conditioning=1e-12)
    p = EditProblem(X, D, Xs, 1.0, lam)
    dW = p.solve(2)
    assert torch.isfinite(dW).all()
    lam_abs = lam_abs_of(X, lam)
    got, best, zero = (objective(X, D, Xs, 1.0, lam_abs, w)
                       for w in (dW.numpy(), reference(X, D, Xs, 1.0, lam, 2), np.zeros((16, 3))))
    assert best < (1 - 1e-6) * zero  # the optimum does move: dW = 0 would fail the next line
    assert got <= best + 1e-9 * zero


def test_lambda_is_scaled_by_the_harmful_gram_only():
    """A gamma sweep must not change the ridge: lam_abs = lam * trace(X^T X / n) / d, whatever gamma is."""
    X, D, Xs = arrays(5, 30, 8, 3, 20)
    Xs = Xs * 10  # a harmless Gram much larger than the harmful one
    expected = lam_abs_of(X, 0.05)
    for gamma in (0.0, 1.0, 100.0):
        assert EditProblem(X, D, Xs, gamma, 0.05).lam_abs == pytest.approx(expected, rel=1e-12)


# -- the hard null-space constraint ---------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(6, 14), st.integers(1, 5), st.integers(1, 5), st.integers(0, 2**31))
def test_nullspace_edit_does_not_move_harmless_inputs(d, m, r, seed):
    ns = d // 2  # fewer harmless rows than dimensions: an exact null space of d - ns directions
    X, D, Xs = arrays(seed, 12, d, m, ns)
    p = EditProblem(X, D, Xs, 1.0, 0.01, constraint="nullspace", null_tol=1e-10)
    dW = p.solve(r)
    assert p.basis.shape == (d, d - ns)
    assert float((p.Xs @ dW).norm()) <= 1e-12 * float(p.Xs.norm() * dW.norm()) + 1e-300
    assert torch.linalg.matrix_rank(dW, rtol=1e-9) <= r
    soft = EditProblem(X, D, Xs, 1.0, 0.01)
    assert p.objective(dW) >= soft.objective(soft.ridge()) - 1e-12
    expected = reference(X, D, Xs, 1.0, 0.01, r, basis=independent_null_space(Xs))
    assert np.allclose(dW.numpy(), expected, atol=1e-9, rtol=1e-7)


def independent_null_space(Xs):
    _, S, Vt = np.linalg.svd(Xs)
    return Vt[len(S):].T  # ns < d: the rows past the singular values span the null space


def test_soft_penalty_tends_to_the_nullspace_solution_as_gamma_grows():
    X, D, Xs = arrays(9, 25, 10, 4, 4)
    hard = EditProblem(X, D, Xs, 1.0, 0.01, constraint="nullspace", null_tol=1e-10).solve(4)
    soft = EditProblem(X, D, Xs, 1e9, 0.01).solve(4)
    assert torch.allclose(soft, hard, atol=1e-6, rtol=1e-5)


def test_nullspace_with_a_tolerance_bounds_the_harmless_movement():
    """ns >= d: no exact null space; the kept directions move harmless inputs by at most null_tol's share."""
    X, D, Xs = arrays(4, 30, 8, 3, 40, conditioning=1e-4)
    tol = 1e-3
    p = EditProblem(X, D, Xs, 1.0, 0.01, constraint="nullspace", null_tol=tol)
    assert 0 < p.basis.shape[1] < 8
    dW = p.solve(3)
    largest = float(torch.linalg.eigvalsh(p.Xs.T @ p.Xs / len(Xs)).max())
    assert float((p.Xs @ dW).norm() ** 2 / len(Xs)) <= tol * largest * float(dW.norm() ** 2) * (1 + 1e-9)
    assert null_space_basis(p.Xs, 1e-12).shape[1] == 0


# -- safety-neuron criteria on planted neurons ----------------------------------------------------------
# Each neuron j: harmless activations sd_s * e, harmful mu + sd_h * e, with e = +1, -1, +1, ... (mean 0),
# so the mean gap is mu exactly and the standard deviations are known. Values (z = gap z-score across
# neurons, d = Cohen's d with the pooled sd; * = the criterion a wrong rule would use instead):
#   background x30      z in [-0.56, 0.15], d in [0.20, 0.79]                          neither
#   A d only            z 0.63, d 5.97                                                  yes
#   B z only            z 3.14, d 0.66                                                  yes
#   C both              z 3.14, d 10.9                                                  yes
#   N neither           z 0.63, d 0.24                                                  no
#   U uncentred         z 1.83 (* uncentred z 2.63), d 0.44                             no
#   H harmless sd       z 0.28, d 0.80 (* with the harmless sd only: 1.79)              no
#   H2 harmful sd       z 0.28, d 0.80 (* with the harmful sd only: 1.79)               no
#   NA negative d       z -1.28, d -1.99                                                two-sided only
#   NB negative z       z -3.07, d -0.38                                                two-sided only
PLANTED = {"A": (1.2, 0.2, 0.2), "B": (3.3, 5.0, 5.0), "C": (3.3, 0.3, 0.3), "N": (1.2, 5.0, 5.0),
           "U": (2.2, 5.0, 5.0), "H": (0.9, 1.5, 0.5), "H2": (0.9, 0.5, 1.5), "NA": (-0.4, 0.2, 0.2),
           "NB": (-1.9, 5.0, 5.0)}
SLOTS = {"A": 3, "B": 8, "C": 12, "N": 17, "U": 21, "H": 25, "H2": 29, "NA": 33, "NB": 37}  # among the 39


def planted_activations(n=100):
    width = 30 + len(PLANTED)
    mu, sd_h, sd_s = np.empty(width), np.ones(width), np.ones(width)
    background = [j for j in range(width) if j not in SLOTS.values()]
    mu[background] = 0.5 + 0.3 * np.sin(np.arange(30))
    for name, (m, h, s) in PLANTED.items():
        mu[SLOTS[name]], sd_h[SLOTS[name]], sd_s[SLOTS[name]] = m, h, s
    e = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)[:, None]
    harmful = mu + sd_h * e
    harmless = sd_s * e
    return (torch.tensor(harmful, dtype=torch.float32)[:, None, :],
            torch.tensor(harmless, dtype=torch.float32)[:, None, :])


@pytest.mark.parametrize("two_sided, expected", [
    (False, {"A", "B", "C"}),
    (True, {"A", "B", "C", "NA", "NB"}),
])
def test_safety_neuron_mask_on_planted_neurons(two_sided, expected):
    harmful, harmless = planted_activations()
    mask = safety_neuron_mask(harmful, harmless, tau_mag=2.0, tau_stat=1.0, two_sided=two_sided)
    assert mask.shape == (1, harmful.shape[-1])
    assert set(mask[0].nonzero().flatten().tolist()) == {SLOTS[name] for name in expected}


def test_planted_neurons_sit_where_the_table_says():
    """Guards the fixture: if the table's margins were wrong, the mask test would prove nothing."""
    harmful, harmless = (t[:, 0].double().numpy() for t in planted_activations())
    gap = harmful.mean(0) - harmless.mean(0)
    z = (gap - gap.mean()) / gap.std(ddof=1)
    d = gap / np.sqrt((harmful.var(0, ddof=1) + harmless.var(0, ddof=1)) / 2)
    for name, want_z, want_d in [("A", 0.63, 5.97), ("B", 3.14, 0.66), ("U", 1.83, 0.44), ("H", 0.28, 0.80),
                                 ("H2", 0.28, 0.80), ("NA", -1.28, -1.99), ("NB", -3.07, -0.38)]:
        assert (z[SLOTS[name]], d[SLOTS[name]]) == pytest.approx((want_z, want_d), abs=0.01), name
    background = [j for j in range(len(gap)) if j not in SLOTS.values()]
    assert np.abs(z[background]).max() < 1.5 and np.abs(d[background]).max() < 0.9
    assert gap.mean() / gap.std(ddof=1) > 0.5  # uncentred z differs from the centred one


# -- options ------------------------------------------------------------------------------------------
def test_layers_ranked_by_source_safety_neurons_earlier_layer_on_ties():
    counts = torch.tensor([3, 9, 4, 9, 0, 7])
    pick = SparseEditor._layers
    assert pick(SparseConfig(), counts, 6) == [1]
    assert pick(SparseConfig(layers="top1"), counts, 6) == [1]
    assert pick(SparseConfig(layers="top3"), counts, 6) == [1, 3, 5]
    assert pick(SparseConfig(layer="5,2"), counts, 6) == [2, 5]
    assert pick(SparseConfig(layer=4), counts, 6) == [4]
