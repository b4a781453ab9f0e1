"""Accuracy against cost of randomized range finders on bench/rsvd.ts's matrix recipe.

Float64 numpy models (not timings): subspace iteration (what eigenlorax, sklearn and torch
run) and block Krylov (Musco & Musco 2015: every power step's block kept), at several
block widths and power steps. Cost = (2q + 1) b + (q + 1) b for Krylov's passes over A
(the last one with the whole basis), 2 (q + 1) l for subspace iteration; relative to
eigenlorax's defaults in bench/rsvd.ts (k = 64, l = 74, q = 2). Error = max relative error
of the top-64 singular values against numpy's exact SVD, median of three seeds.

    python3 bench/peers/krylov_model.py      (about a minute: the exact SVD dominates)
"""
import numpy as np

m, n, signal, k = 4096, 8000, 256, 64
rng = np.random.default_rng(1)
g1 = rng.standard_normal((m, signal)) / np.sqrt(m)
g2 = rng.standard_normal((n, signal)) / np.sqrt(n)
A = (g1 * (1 / (1 + np.arange(signal)))) @ g2.T
noise = (0.1 / (1 + k)) / (np.sqrt(m) + np.sqrt(n))
A += rng.uniform(-1, 1, (m, n)) * noise * np.sqrt(3)
A = A.astype(np.float32).astype(np.float64)
truth = np.linalg.svd(A, compute_uv=False)[:k]


def orth(x):
    return np.linalg.qr(x)[0]


def subspace(l, q, seed):
    q_ = orth(A @ np.random.default_rng(seed).standard_normal((n, l)))
    for _ in range(q):
        q_ = orth(A @ orth(A.T @ q_))
    return np.linalg.svd(q_.T @ A, compute_uv=False)[:k]


def krylov(b, q, seed):
    q_ = orth(A @ np.random.default_rng(seed).standard_normal((n, b)))
    blocks = [q_]
    for _ in range(q):
        q_ = orth(A @ orth(A.T @ q_))
        blocks.append(q_)
    return np.linalg.svd(orth(np.hstack(blocks)).T @ A, compute_uv=False)[:k]


def error(values):
    return float(np.max(np.abs(values - truth) / truth))


ours = 2 * (2 + 1) * 74
cases = [("subspace iteration l 74 q 2", subspace, (74, 2), ours), ("subspace iteration l 74 q 1", subspace, (74, 1), 4 * 74)]
cases += [(f"block Krylov b {b} q {q}", krylov, (b, q), (2 * q + 1) * b + (q + 1) * b) for b, q in [(74, 1), (64, 1), (56, 1), (40, 2), (32, 2), (24, 3)]]
print(f"{'method':<30} {'cost':>6} {'top-64 error':>13}")
for name, f, args, cost in cases:
    errors = sorted(error(f(*args, seed)) for seed in range(3))
    print(f"{name:<30} {cost / ours:6.2f} {errors[1]:13.4f}")
