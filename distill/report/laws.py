"""Candidate scaling laws for test error, each a function of parameters N and images seen D.

All three are fitted in scaled units (n = N / N_ref, d = D / D_ref, c = C / C_ref, each reference
the smallest fitted value) so the optimiser sees numbers near 1:

- `zhai`: E = exp(la) (c + d0)^-b + E0, compute only (Zhai et al. 2022, "Scaling Vision
  Transformers"); c is the student's training FLOPs per image times D, so N enters only through C.
- `chinchilla`: E = E0 + exp(lA) n^-alpha + exp(lB) d^-beta (Hoffmann et al. 2022): size and data
  add, so the size effect is the same at every budget.
- `kaplan`: E = E0 + [(exp(lNc) / n)^(aN / aD) + exp(lDc) / d]^aD (Kaplan et al. 2020, eq. 1.5,
  with a floor): size and data interact, so the gain from size grows with the budget.

Each form gives the error and its gradient in the parameters (the fit's loss is a Huber loss on
log error, minimised by L-BFGS-B, which converges in far fewer loss evaluations with an exact
gradient than with finite differences: the bootstrap refits each form hundreds of times). Bounds:
the floor E0 lies in [0, min measured error] (a floor above a measured error is impossible);
exponents in [0, 5] (zhai), [0, 3] (chinchilla), [0.01, 3] (kaplan, whose aN / aD needs aD > 0);
log-scales in [-25, 25]; the offset d0 in [0, 100] smallest computes. An estimate that sits on one
of these is flagged by `distill.report.fit_runs`, never read as an asymptote.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Callable, Tuple

import numpy as np

_LOG_SCALE = (-25.0, 25.0)


@dataclass(frozen=True)
class Form:
    """One candidate law. `value_grad(theta, x)` returns (error (n,), d error / d theta (n, p)) for
    x = (n, d, c) scaled arrays; `bounds(y_min)` the box; `starts(x, y)` a grid of starting points."""

    name: str
    expression: str
    names: Tuple[str, ...]
    floor: str  # the parameter that is the irreducible error
    value_grad: Callable
    bounds: Callable
    starts: Callable

    def error(self, theta, x) -> np.ndarray:
        """The law's test error at x (scaled n, d, c)."""
        return self.value_grad(np.asarray(theta, float), x)[0]


def _zhai(theta, x):
    la, b, e0, d0 = theta
    _, _, c = x
    g = (c + d0) ** (-b)
    a = np.exp(la)
    f = a * g + e0
    grad = np.column_stack([a * g, -a * g * np.log(c + d0), np.ones_like(c), -a * b * g / (c + d0)])
    return f, grad


def _chinchilla(theta, x):
    e0, la, alpha, lb, beta = theta
    n, d, _ = x
    tn, td = np.exp(la) * n ** (-alpha), np.exp(lb) * d ** (-beta)
    grad = np.column_stack([np.ones_like(n), tn, -tn * np.log(n), td, -td * np.log(d)])
    return e0 + tn + td, grad


def _kaplan(theta, x):
    e0, lnc, ldc, an, ad = theta
    n, d, _ = x
    u = (an / ad) * (lnc - np.log(n))  # log of (Nc / N)^(aN / aD)
    v = ldc - np.log(d)  # log of Dc / D
    big = np.logaddexp(u, v)
    s = np.exp(ad * big)
    su, sv = np.exp(u - big), np.exp(v - big)  # the two terms' shares of the bracket
    grad = np.column_stack([np.ones_like(n), s * an * su, s * ad * sv, s * su * (lnc - np.log(n)),
                            s * (big - su * u)])
    return e0 + s, grad


def _spread(y, e0):
    return max(float(np.mean(y)) - e0, 1e-6)


def _zhai_starts(x, y):
    c = x[2]
    out = []
    for b, d0, share in product((0.1, 0.3, 0.6, 1.0), (0.0, 1.0), (0.0, 0.5, 0.9)):
        e0 = share * float(y.min())
        out.append([np.log(_spread(y, e0) / np.mean((c + d0) ** (-b))), b, e0, d0])
    return out


def _chinchilla_starts(x, y):
    n, d, _ = x
    out = []
    for alpha, beta, share in product((0.1, 0.3, 0.6, 1.0), (0.1, 0.3, 0.6, 1.0), (0.0, 0.5, 0.9)):
        e0 = share * float(y.min())
        half = _spread(y, e0) / 2  # each term starts with half the reducible error
        out.append([e0, np.log(half / np.mean(n ** -alpha)), alpha, np.log(half / np.mean(d ** -beta)), beta])
    return out


def _kaplan_starts(x, y):
    n, d, _ = x
    gn, gd = float(np.exp(np.mean(np.log(n)))), float(np.exp(np.mean(np.log(d))))  # geometric means
    out = []
    for an, ad, share in product((0.1, 0.3, 0.6, 1.0), (0.1, 0.3, 0.6, 1.0), (0.0, 0.5)):
        e0 = share * float(y.min())
        half = _spread(y, e0) ** (1 / ad) / 2  # each term starts with half the bracket at the mean point
        out.append([e0, np.log(gn) + (ad / an) * np.log(half), np.log(gd * half), an, ad])
    return out


FORMS = {
    "zhai": Form("zhai", "E = exp(la) * (c + d0)**-b + E0, c = C / C_ref", ("la", "b", "E0", "d0"), "E0", _zhai,
                 lambda y_min: [_LOG_SCALE, (0.0, 5.0), (0.0, y_min), (0.0, 100.0)], _zhai_starts),
    "chinchilla": Form("chinchilla", "E = E0 + exp(lA) * n**-alpha + exp(lB) * d**-beta, n = N / N_ref, "
                       "d = D / D_ref", ("E0", "lA", "alpha", "lB", "beta"), "E0", _chinchilla,
                       lambda y_min: [(0.0, y_min), _LOG_SCALE, (0.0, 3.0), _LOG_SCALE, (0.0, 3.0)],
                       _chinchilla_starts),
    "kaplan": Form("kaplan", "E = E0 + ((exp(lNc) / n)**(aN / aD) + exp(lDc) / d)**aD, n = N / N_ref, d = D / D_ref",
                   ("E0", "lNc", "lDc", "aN", "aD"), "E0", _kaplan,
                   lambda y_min: [(0.0, y_min), _LOG_SCALE, _LOG_SCALE, (0.01, 3.0), (0.01, 3.0)], _kaplan_starts),
}
