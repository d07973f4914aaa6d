"""fits.json, report.md and the plots of a fit (`distill fit`, and the scaling section of `distill study`),
written from the result `distill.report.fit_claims.analyse` returns: every figure in the text is
a field of fits.json."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from distill.errors import ConfigError  # noqa: E402
from distill.precision import word  # noqa: E402
from distill.report.fit_claims import analyse, frontier  # noqa: E402
from distill.report.fit_runs import HUBER_DELTA, LEVEL, cell_means  # noqa: E402
from distill.report.laws import FORMS  # noqa: E402


def _g(v, spec=".3g") -> str:
    return "-" if v is None else format(v, spec)


def _table(head: List[str], body: List[list]) -> List[str]:
    rows = ["| " + " | ".join(map(str, r)) + " |" for r in body]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows]


def _laws(laws: dict) -> List[str]:
    lines = []
    for method, law in laws.items():
        if law.get("form") is None:
            lines += [f"- **{method}**: not fitted: {law['not_fitted']}", ""]
            continue
        cands = ", ".join(f"{k} {_g(v, '.2f')}" for k, v in law["candidates"].items())
        chosen = ("Declared, not chosen by leaving sizes out" if law.get("declared")
                  else f"Leave-one-size-out error (top-1 points): {cands}")
        fit, boot = law["fit"], law["bootstrap"]
        lines += [f"**{method}**: `{law['form']}`, {law['expression']}; {law['runs']} runs of "
                  f"{len(law['sizes'])} sizes. {chosen}. Best of "
                  f"{fit['starts']} starts {'converged' if fit['converged'] else 'did NOT converge'} "
                  f"({fit['starts_at_best']} starts reached its loss); {boot['converged']} of {boot['draws']} "
                  f"refits converged. References: N_ref = {_g(law['reference']['params'])}, D_ref = "
                  f"{_g(law['reference']['images'])}, C_ref = {_g(law['reference']['flops'])} FLOPs.", ""]
        body = []
        for name, p in law["parameters"].items():
            flag = "**on a bound**: a bound, not an estimate" if p["on_bound"] else "no"
            what = "floor (irreducible error)" if p["floor"] else ""
            body.append([name, what, f"{p['value']:.4g}", f"[{p['low']:.4g}, {p['high']:.4g}]",
                         f"[{p['bounds'][0]:g}, {p['bounds'][1]:.4g}]", f"{100 * p['bound_share']:.0f}%", flag])
        lines += _table(["parameter", "", "value", f"{100 * LEVEL:.0f}% interval", "bounds",
                         "refits on a bound", "on a bound"], body) + [""]
    return lines


def _cut(result: dict) -> List[str]:
    cut = result["settings"].get("max_epochs")
    if cut is None:
        return []
    left = ", ".join(f"{m} {law.get('beyond_max_epochs', 0)}" for m, law in result["laws"].items())
    return [f"Fitted only on runs that saw their unique images at most {cut:g} times (the laws take D as "
            f"images seen, which repetition breaks); runs left out of the fits for more epochs: {left}.", ""]


def _precisions(result: dict) -> List[str]:
    """A line where the rows computed in more than one precision (runs.jsonl's `mixed_precision`): if
    the fitted rows share one and the held-out rows another, that the prediction is judged across it."""
    found = result["settings"].get("precisions", {})
    if len(found) < 2:
        return []
    held = result["settings"].get("held_out_precisions", {})
    fitted = {p: n - held.get(p, 0) for p, n in found.items() if n - held.get(p, 0)}
    if len(fitted) == 1 and len(held) == 1 and held.keys() != fitted.keys():
        (f, nf), (h, nh) = *fitted.items(), *held.items()
        return [f"**The held-out rows computed in {word(h)} ({nh}), the fitted rows in {word(f)} ({nf})**: the laws "
                f"are fitted in {word(f)}, so the prediction's errors include what {word(h)} changes.", ""]
    counts = ", ".join(f"{word(p)} {n}" for p, n in found.items())
    return [f"**The rows computed in {len(found)} precisions** ({counts} rows; the rest do not say): the laws fit "
            "them as one, so what precision changes is in the fits and their predictions too.", ""]


def _predictions(result: dict) -> List[str]:
    preds = result["predictions"]
    if not preds:
        return ["No held-out rows: nothing was predicted.", ""]
    body = [[p["method"], _g(p["params"]), _g(p["images"]),
             f"{p['predicted_top1']:.2f} [{p['low']:.2f}, {p['high']:.2f}]" + ("" if p["low"] <= p["predicted_top1"] <=
                                                                               p["high"] else " (outside*)"),
             _g(p["persistence_top1"], ".2f"),
             _g(p["loglinear_top1"], ".2f"), _g(p["measured_top1"], ".2f"), p["seeds"]] for p in preds]
    lines = _table(["method", "params", "images", "law: top-1 % [95% prediction interval]", "persistence",
                    "log-linear", "measured (mean)", "seeds"], body) + [""]
    if any("(outside*)" in row[3] for row in body):
        lines += ["*The fit's prediction lies outside its own interval: the bootstrap refits settle elsewhere than the "
                  "fit, so the fit's optimum is fragile there (more refits, `--bootstrap`, show how much).", ""]
    for key, e in result["holdout_errors"].items():
        against = [f"{label} {d['value']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]" for label, d in
                   (("persistence's", e.get("law_minus_persistence")), ("log-linear's", e.get("law_minus_loglinear")))
                   if d is not None]
        lines.append(f"- {key}: mean absolute error over {e['cells']} cells: law {_g(e['predicted'], '.2f')}, "
                     f"persistence {_g(e['persistence'], '.2f')}, log-linear {_g(e['loglinear'], '.2f')} points" +
                     (f"; the law's minus {', '.join(against)} (95%, each cell's seeds resampled; below zero: the "
                      "law is closer)" if against else ""))
    chance = result.get("holdout_power", {}).get("all")
    if chance:
        lines += ["", f"Power: were each law right in form, its mean absolute error over these {chance['cells']} cells "
                  f"would be at most {chance['goal']:g} point with probability {chance['p_within_goal']:.2f} (expected "
                  f"{chance['expected_mae']:.2f})" + (f"; an error as large as the law's in a share "
                  f"{chance['p_as_large']:.2f} of its draws" if "p_as_large" in chance else "") +
                  ". From the draws the intervals are read from; they run narrow (docs/fit.md): read these as upper ends."]
    return lines + [""]


def _comparisons(result: dict) -> List[str]:
    lines = []
    for c in result["comparisons"]:
        a, b = c["methods"]
        head = (f"- **{b} vs {a}, teacher {c['teacher_cost']}** (teacher FLOPs charged per run: "
                f"{_g(c['teacher_flops_charged'][1])} to {b}, {_g(c['teacher_flops_charged'][0])} to {a}): ")
        if c["range"] is None:
            lines.append(head + "no total compute at which both were measured; no crossing is claimed.")
            continue
        found = "; ".join(f"{_g(x['flops'])} FLOPs [{_g(x['low'])}, {_g(x['high'])}], in "
                          f"{100 * x['draws_with_crossing']:.0f}% of refits" for x in c["crossings"]) or "none"
        parts = ", ".join(f"{s['lower_error']} lower from {_g(s['from'])} to {_g(s['to'])}" for s in c["segments"])
        lines.append(head + f"measured range {_g(c['range'][0])} to {_g(c['range'][1])} FLOPs; crossings: "
                     f"{found}. {parts}.")
    return (lines or ["No pair of fitted methods to compare."]) + [""]


def _gains(result: dict) -> List[str]:
    if not result["gains"]:
        return ["No method shares a cell and a seed with its baseline.", ""]
    body = [[g["method"], g["baseline"], g.get("size") or "-", _g(g["params"]), _g(g["images"]),
             f"{g['gain']:+.2f} ± {_g(g['half_width'], '.2f')}", len(g["seeds"])] for g in result["gains"]]
    return _table(["method", "baseline", "size", "params", "images", "gain (top-1 points, 95% t)", "pairs"],
                  body) + [""]


def markdown(result: dict, figures, level: int = 1) -> str:
    """The fit's report; `level` is the depth of its top heading (2 inside a study's report)."""
    h = "#" * level
    s = result["settings"]
    text = [f"{h} Scaling fits", "",
            f"{s['rows']} runs ({s['held_out']} held out), {s['bootstrap']} bootstrap refits (residuals, "
            f"seed {s['seed']}), Huber loss on log error (delta {s['huber_delta']:g}), L-BFGS-B from a grid of "
            "starts. Each method's form was chosen by leave-one-size-out error on the fitted sizes, before the "
            "held-out rows were looked at.", "", *_cut(result), *_precisions(result),
            f"{h}# Laws", "", *_laws(result["laws"]),
            f"{h}# Held-out predictions", "", *_predictions(result),
            f"{h}# Where the compute laws cross", "",
            "Teacher free: its cost is not counted; amortised: its training divided over the students it "
            f"taught ({', '.join(f'{m} {k}' for m, k in result['students'].items())}); full: all of it on each run. "
            "Only computes at which both methods were measured are searched.", "", *_comparisons(result),
            f"{h}# Gain over the baseline, same student and budget, paired by seed", "", *_gains(result),
            f"{h}# Plots", "", *[f"![{Path(f).stem}]({Path(f).name})" for f in figures], ""]
    return "\n".join(text)


def _save(fig, out: Path, name: str, log_x_axes=None) -> Path:
    """Write the figure; `log_x_axes` (an axes) gets the log x scale, grid and legend the plots share."""
    if log_x_axes is not None:
        log_x_axes.set_xscale("log")
        log_x_axes.grid(alpha=0.3, which="both")
        log_x_axes.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return out / name


def error_vs_compute(fits: dict, rows: List[dict], out: Path) -> Path:
    """Measured cell means against student compute, and each method's compute law (its frontier)
    with the 95% band of the refits, over the method's measured range only."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, (method, fit) in enumerate(fits.items()):
        colour = f"C{i}"
        for held in (False, True):
            mine = [r for r in rows if r["method"] == method and bool(r.get("holdout")) == held
                    and r.get("top1") is not None]  # a planned held-out run is predicted, not yet measured
            cells = cell_means(mine)
            ax.plot([c["flops"] for c in cells.values()], [100 - c["top1"] for c in cells.values()],
                    "s" if held else "o", mfc="none" if held else colour, color=colour,
                    label=f"{method} {'held out' if held else 'fitted'} (cell means)" if cells else None)
        xs = np.geomspace(*fit.range("flops"), 120)
        ax.plot(xs, 100 * frontier(fit, fit.solution.theta, xs), color=colour, label=f"{method} law ({fit.form.name})")
        if len(fit.draws):
            band = np.array([frontier(fit, t, xs) for t in fit.draws])
            lo, hi = np.percentile(100 * band, [50 * (1 - LEVEL), 50 * (1 + LEVEL)], axis=0)
            ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, lw=0)
    ax.set(xlabel="student training compute (FLOPs)", ylabel="test error (%)",
           title="Error against compute: laws over the fitted range\n(band: 95% over the refits, the law's uncertainty only)")
    return _save(fig, out, "error_vs_compute.png", ax)


def predicted_vs_measured(preds: List[dict], out: Path) -> Path:
    """Held-out cells: the law (95% prediction interval), persistence and log-linear against the measurement."""
    fig, ax = plt.subplots(figsize=(5.8, 5.5))
    pts = [p for p in preds if p["measured_top1"] is not None]
    m = [p["measured_top1"] for p in pts]
    # the interval as it is, about its middle: it need not hold the fit's point (see _predictions)
    ax.errorbar(m, [(p["low"] + p["high"]) / 2 for p in pts], yerr=[(p["high"] - p["low"]) / 2 for p in pts],
                fmt="none", capsize=4, color="C0")
    ax.plot(m, [p["predicted_top1"] for p in pts], "o", color="C0", label="law (95% PI)")
    for key, marker, colour in (("persistence_top1", "x", "C1"), ("loglinear_top1", "+", "C2")):
        ok = [(p["measured_top1"], p[key]) for p in pts if p[key] is not None]
        if ok:
            ax.plot(*zip(*ok), marker, ms=8, color=colour, label=key.replace("_top1", ""))
    vals = m + [p["low"] for p in pts] + [p["high"] for p in pts]
    ax.plot([min(vals), max(vals)], [min(vals), max(vals)], "--", color="0.4", lw=1, label="y = x")
    ax.set(xlabel="measured top-1 (%)", ylabel="predicted top-1 (%)", title="Held-out cells")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "predicted_vs_measured.png")


def gain_vs_size(gains: List[dict], out: Path) -> Path:
    """Each method's paired gain over its baseline against student size, one line per budget."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (method, images) in sorted({(g["method"], g["images"]) for g in gains}):
        pts = sorted((g for g in gains if (g["method"], g["images"]) == (method, images)), key=lambda g: g["params"])
        ax.errorbar([g["params"] for g in pts], [g["gain"] for g in pts], marker="o", capsize=4,
                    yerr=[g["half_width"] or 0.0 for g in pts], label=f"{method}, {images:.3g} images")
    ax.axhline(0.0, color="0.3", lw=1)
    ax.set(xlabel="student parameters", ylabel="gain over baseline (top-1 points)",
           title="Gain, same student and budget, paired by seed (95% t)")
    return _save(fig, out, "gain_vs_size.png", ax)


def plots(result: dict, fits: dict, rows: List[dict], out) -> List[Path]:
    """Every figure of the fit into `out`; returns their paths."""
    out = Path(out)
    figures = [error_vs_compute(fits, rows, out)] if fits else []
    if any(p["measured_top1"] is not None for p in result["predictions"]):
        figures.append(predicted_vs_measured(result["predictions"], out))
    if result["gains"]:
        figures.append(gain_vs_size(result["gains"], out))
    return figures


def check_max_epochs(max_epochs: float, what: str) -> None:
    """A cut below 1 epoch would leave out runs that saw each image once: refused."""
    if not max_epochs >= 1:
        raise ConfigError(f"{what} {max_epochs}: a run sees its images at least once; give 1 or more")


def check_declared(forms: Dict[str, str], methods: List[str], what: str) -> None:
    """Each declared law (`distill fit --form`, a study's `scaling.forms`) is a known form of one of
    `methods`; `what` begins the refusal."""
    for method, name in forms.items():
        if name not in FORMS:
            raise ConfigError(f"{what}{method}={name}: no such law; give one of {', '.join(FORMS)}")
        if method not in methods:
            raise ConfigError(f"{what}{method}={name}: no method {method!r} is fitted here "
                              f"(the methods: {', '.join(methods)})")


def check_cut(rows: List[dict], max_epochs: Optional[float]) -> None:
    """`max_epochs` must be >= 1, and every fitted row must carry `unique_images` for it (a held-out
    row is not fitted: a planned one may lack it)."""
    if max_epochs is None:
        return
    check_max_epochs(max_epochs, "max epochs")
    bare = next((r for r in rows if not r.get("holdout") and not r.get("unique_images")), None)
    if bare is not None:
        raise ConfigError(f"run {bare.get('run', bare['method'])} has no unique_images: a cut at "
                          f"{max_epochs:g} epochs needs it on every fitted row (or fit without the cut)")


def fit_rows(rows: List[dict], bootstrap: int, students: Optional[int], seed: int = 0,
             max_epochs: Optional[float] = None, forms: Optional[Dict[str, str]] = None) -> tuple:
    """`analyse` plus the settings a reader needs; (result, fits). Refuses a table with no law, and
    `max_epochs` on a table whose fitted rows do not all carry `unique_images` (a held-out row is not
    fitted: a planned one may lack it). `forms`: laws declared per method (`check_declared`), not chosen."""
    forms = dict(forms or {})
    check_cut(rows, max_epochs)
    result, fits = analyse(rows, bootstrap, students, seed, max_epochs, forms)
    if not fits:
        reasons = "; ".join(f"{m}: {law['not_fitted']}" for m, law in result["laws"].items())
        raise ConfigError(f"no method could be fitted: {reasons}")
    result["settings"] = {"rows": len(rows), "held_out": sum(1 for r in rows if r.get("holdout")),
                          "bootstrap": bootstrap, "seed": seed, "huber_delta": HUBER_DELTA,
                          "students": students, "level": 0.95,
                          **({"max_epochs": max_epochs} if max_epochs is not None else {}),
                          **({"forms": forms} if forms else {})}
    precisions = sorted({r["mixed_precision"] for r in rows if r.get("mixed_precision")})
    if precisions:  # tables written before runs.jsonl recorded it have none
        result["settings"]["precisions"] = {p: sum(r.get("mixed_precision") == p for r in rows) for p in precisions}
        held = [r["mixed_precision"] for r in rows if r.get("holdout") and r.get("mixed_precision")]
        if len(precisions) > 1 and held:  # kept out of single-precision tables, whose fits.json it would change
            result["settings"]["held_out_precisions"] = {p: held.count(p) for p in sorted(set(held))}
    return result, fits


def write_fit(result: dict, fits: dict, rows: List[dict], folder: Path, level: int = 1) -> List[Path]:
    """fits.json, report.md and the plots into an existing `folder` (a temporary one: the caller
    renames it into place); returns the figures."""
    figures = plots(result, fits, rows, folder)
    (folder / "fits.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "report.md").write_text(markdown(result, figures, level))
    return figures
