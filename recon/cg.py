"""Conjugate gradients for Hermitian positive-definite operators on torch tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["CGResult", "conjugate_gradient"]


@dataclass(frozen=True)
class CGResult:
    """Solution and convergence record.

    Attributes:
        x: the solution, shaped like the right-hand side.
        iterations: iterations run.
        residual_norms: ‖r_k‖ / ‖b‖ after each iteration.
    """

    x: torch.Tensor
    iterations: int
    residual_norms: tuple[float, ...]


def conjugate_gradient(
    A: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    max_iter: int = 30,
    tol: float = 1e-6,
) -> CGResult:
    """Solve ``A x = b`` for a Hermitian positive-definite linear operator ``A``.

    Args:
        A: function applying the operator to a tensor shaped like ``b``.
        b: right-hand side (any shape, complex or real).
        x0: starting point (zeros by default).
        max_iter: iteration limit.
        tol: stop when ‖r‖/‖b‖ < tol.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - A(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = torch.vdot(r.flatten(), r.flatten()).real
    bnorm = float(torch.linalg.vector_norm(b)) or 1.0
    history: list[float] = []
    iterations = 0
    for _ in range(max_iter):
        iterations += 1
        Ap = A(p)
        denom = torch.vdot(p.flatten(), Ap.flatten()).real
        if float(denom) <= 0:
            break
        alpha = rs / denom
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = torch.vdot(r.flatten(), r.flatten()).real
        history.append(float(torch.sqrt(rs_new)) / bnorm)
        if history[-1] < tol:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return CGResult(x, iterations, tuple(history))
