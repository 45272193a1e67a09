"""Slow, plain implementations of lesson functions, for the exercise tests.

A test of one exercise must not call another exercise's function: in a student's copy that one
may be blanked (`python -m exercises make`), and a test would then fail for a reason that is not
the student's answer. Where an exercise's function calls another one, its tests swap in these
(with monkeypatch); where a test needs a reference value, it computes it with these. Each is
written the obvious way (broadcasting, loops, explicit matrices), not the lessons' fast way.
"""

import math

import torch


def nearest(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """argmin_k ||z - e(k)||^2 by broadcasting every difference. (..., d), (K, d) -> (...)."""
    return ((z[..., None, :] - codebook) ** 2).sum(-1).argmin(-1)


def residual_quantize(z, codebooks, depth, pick=nearest):
    """RQ Eq. 3-5 as a plain loop: codes (..., D), partial sums (..., D, d)."""
    books = [codebooks] * depth if torch.is_tensor(codebooks) else list(codebooks)
    r, codes, partial = z, [], []
    for book in books:
        k = pick(r, book)
        codes.append(k)
        partial.append((partial[-1] if partial else 0) + book[k])
        r = r - book[k]
    return torch.stack(codes, -1), torch.stack(partial, -2)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k, then top-p, one distinct row at a time with Python lists. (B, K) -> same."""
    rows, inverse = torch.unique(logits, dim=0, return_inverse=True)
    out = rows.clone()
    for row in out:
        order = sorted(range(len(row)), key=lambda i: -row[i].item())
        if 0 < top_k < len(row):
            for i in order[top_k:]:
                if row[i] < row[order[top_k - 1]]:
                    row[i] = -math.inf
        if top_p < 1.0:
            p, mass = row.softmax(0), 0.0
            for i in order:
                if mass >= top_p:
                    row[i] = -math.inf
                mass += p[i].item()
    return out[inverse]


def transition_matrix(vqd, sched, t: int, s: int | None = None) -> torch.Tensor:
    """VQD's explicit (K+1, K+1) matrix [Q]_mn = q(x_t = m | x_s = n), s = t - 1 by default (one
    step): a code stays with prob. alpha (plus its share beta of the uniform redraw), becomes any
    given code with prob. beta, [MASK] with prob. gamma; [MASK] stays [MASK]. Each COLUMN sums to 1."""
    alpha, beta, gamma = vqd.transition(sched, t - 1 if s is None else s, t)
    K = sched.K
    Q = torch.zeros(K + 1, K + 1, dtype=torch.float64)
    Q[:K, :K] = alpha * torch.eye(K, dtype=torch.float64) + beta  # stay, or redrawn to m
    Q[K, :K] = gamma  # masked
    Q[K, K] = 1.0  # [MASK] stays [MASK]
    return Q


def dense_closed_form(vqd):
    """VQD's q(x_t | x_0) (`log_q_xt_given_x0`) by the explicit matrix Qbar_t = Q_t ... Q_1 of
    transition_matrix: the same signature, int t, weights (..., K) -> (..., K+1)."""

    def log_q_xt_given_x0(log_x0, sched, t, exact=False):
        assert isinstance(t, int), "the oracle takes an int t"
        Qbar = torch.eye(sched.K + 1, dtype=torch.float64)
        for i in range(1, t + 1):
            Qbar = transition_matrix(vqd, sched, i) @ Qbar
        p = log_x0.double().exp() @ Qbar[:, : sched.K].t()  # sum_n Qbar[m, n] x0_n
        if exact:
            return p.log().clamp_min(vqd.LOG_ZERO).to(log_x0.dtype)
        return p.clamp_min(1e-300).log().clamp_min(vqd.LOG_EPS).to(log_x0.dtype)

    return log_q_xt_given_x0


def dense_likelihood(vqd):
    """VQD's q(x_t | x_s = j) for every j (`log_q_xt_given_xs`) read off row x_t of the explicit
    matrix Qbar_{t|s}: the same signature, int s and t, x_t (...) -> (..., K+1)."""

    def log_q_xt_given_xs(x_t, sched, s, t, dtype=torch.float32, exact=False):
        row = transition_matrix(vqd, sched, int(t), int(s))[x_t].to(dtype)  # (..., K+1)
        if exact:
            return row.log().clamp_min(vqd.LOG_ZERO)
        return row.clamp_min(1e-300).log().clamp_min(vqd.LOG_EPS)

    return log_q_xt_given_xs
