"""PNG figures for a scaling study: error against compute with fitted laws, distillation's gain
against model size, predicted against measured error, and one law with its bootstrap band.

Each function takes plain data and an output folder and returns the written file's path.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from distill.report.fits import PowerLawFit  # noqa: E402

_DASHES = ("--", ":", "-.")  # plain training is solid; other methods take these in turn


def _save(fig, out, fname: str) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / fname, dpi=120)
    plt.close(fig)
    return out / fname


def _styles(methods) -> dict:
    others = [m for m in dict.fromkeys(methods) if m != "plain"]
    return {"plain": "-", **{m: _DASHES[i % len(_DASHES)] for i, m in enumerate(others)}}


def _law_with_band(ax, fit: PowerLawFit, x_lo: float, x_hi: float, **line):
    """The fitted law over [x_lo, x_hi] (log-spaced) and, when it has draws, its 95% band."""
    xs = np.geomspace(x_lo, x_hi, 200)
    ax.plot(xs, fit.predict(xs), **line)
    if len(fit.draws):
        lo, hi = fit.band(xs)
        ax.fill_between(xs, lo, hi, color=line.get("color", "0.3"), alpha=0.15, lw=0)


def error_vs_compute(series: list, fits: dict, out) -> Path:
    """Test error against training compute (log x), one line per (size, method), with each
    method's fitted law and its bootstrap band.

    series: dicts {label, method, params, compute, error, error_std}; same colour per size, plain
    solid, other methods dashed. fits: {method: PowerLawFit}.
    """
    styles = _styles([s["method"] for s in series] + list(fits))
    sizes = sorted({s["params"] for s in series})
    colours = dict(zip(sizes, plt.cm.viridis(np.linspace(0, 0.9, max(len(sizes), 1)))))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for s in series:
        ax.errorbar(s["compute"], s["error"], yerr=s.get("error_std"), ls=styles[s["method"]],
                    marker="o", ms=4, capsize=3, color=colours[s["params"]], label=s["label"])
    for method, fit in fits.items():
        xs = [c for s in series if s["method"] == method for c in s["compute"]]
        xs = xs or [c for s in series for c in s["compute"]]
        _law_with_band(ax, fit, min(xs), max(xs), ls=styles[method], color="0.2", lw=1.5,
                       label=f"{method} fit: b={fit.b:.3g}, c={fit.c:.3g}")
    ax.set_xscale("log")
    ax.set(xlabel="training compute (FLOPs)", ylabel="test error",
           title="Test error against compute (fits: 95% bootstrap band)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out, "error_vs_compute.png")


def gain_vs_size(rows: list, out) -> Path:
    """Distillation's gain in top-1 (points) against student parameters (log x), one line per
    budget. rows: dicts {budget, params, gain, gain_ci (95% half-width, optional)}."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for budget in sorted({r["budget"] for r in rows}):
        pts = sorted((r for r in rows if r["budget"] == budget), key=lambda r: r["params"])
        ax.errorbar([r["params"] for r in pts], [r["gain"] for r in pts],
                    yerr=[r.get("gain_ci", 0.0) for r in pts], marker="o", capsize=4,
                    label=f"budget {budget:.3g}")
    ax.axhline(0.0, color="0.3", lw=1)
    ax.set_xscale("log")
    ax.set(xlabel="student parameters", ylabel="gain from distillation (top-1 points)",
           title="Distillation's gain against student size (bars: 95% interval)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, out, "gain_vs_size.png")


def predicted_vs_measured(points: list, out) -> Path:
    """Each law's prediction (with its interval) against the measured value, and the line y = x.
    points: dicts {label, predicted, low, high, measured}."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for p in points:
        yerr = [[p["predicted"] - p["low"]], [p["high"] - p["predicted"]]]  # (2, 1): below, above
        ax.errorbar([p["measured"]], [p["predicted"]], yerr=yerr, fmt="o", capsize=4, label=p["label"])
    values = [v for p in points for v in (p["measured"], p["low"], p["high"])]
    lo, hi = min(values), max(values)
    pad = 0.05 * (hi - lo or abs(hi) or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.3", lw=1, ls="--", label="y = x")
    ax.set(xlabel="measured", ylabel="predicted", title="Predicted against measured (bars: 95% band)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "predicted_vs_measured.png")


def fit_curve(x, y, fit: PowerLawFit, out, xlabel: str, ylabel: str, fname: str) -> Path:
    """Measured (x, y) and one fitted law over their range (log x) with its bootstrap band."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(x, y, "o", color="C0", label="measured")
    _law_with_band(ax, fit, x.min(), x.max(), color="C1", lw=1.5,
                   label=f"a (x + d)^-b + c: b={fit.b:.3g}, c={fit.c:.3g}")
    ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, out, fname)
