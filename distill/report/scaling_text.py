"""The scaling section of report.md, from the result `distill.report.scaling` computed."""
from __future__ import annotations

from typing import List

from distill.report.stats import mean, std


def _g(v, spec=".3g") -> str:
    return "-" if v is None else format(v, spec)


def _table(head: List[str], body: List[list]) -> List[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(map(str, r)) + " |" for r in body]


def _runs_table(rows: List[dict]) -> List[str]:
    cells = {}
    for r in rows:
        cells.setdefault((r["method"], r["params"], r["epochs"]), []).append(r)
    body = []
    for (method, params, epochs), rs in sorted(cells.items()):
        top1 = [r["top1"] for r in rs]
        body.append([method, rs[0]["size"], f"{params / 1e6:.2f}", epochs, f"{rs[0]['images']:,}",
                     _g(mean([r["flops"] for r in rs])), _g(mean([r.get("teacher_share", 0.0) for r in rs])),
                     f"{mean(top1):.2f} ± {std(top1):.2f}", _g(mean([r["test_loss"] for r in rs]), ".4f"), len(rs)])
    return _table(["method", "size", "params (M)", "epochs", "images", "student FLOPs", "teacher share (FLOPs)",
                   "top-1 % (mean ± std)", "test loss", "seeds"], body)


def _law(d) -> str:
    if isinstance(d, str):
        return f"not fitted: {d}"
    p, ci = d["params"], d["ci95"]
    if "alpha" in p:
        return (f"e = {p['e']:.4f}, alpha = {p['alpha']:.3f} [{_ci(ci['alpha'])}], beta = {p['beta']:.3f} "
                f"[{_ci(ci['beta'])}], rmse {d['rmse']:.4f}, {d['n_points']} runs")
    return (f"b = {p['b']:.3f} [{_ci(ci['b'])}], c = {p['c']:.4f} [{_ci(ci['c'])}], a = {p['a']:.3g}, "
            f"rmse {d['rmse']:.4f}, {d['n_points']} runs")


def _ci(pair) -> str:
    return "no interval" if pair is None else f"{pair[0]:.3f}, {pair[1]:.3f}"


def _fits(fits: dict) -> List[str]:
    lines = []
    for method, f in fits.items():
        lines.append(f"- **{method}**")
        for key, d in f.items():
            lines.append(f"  - {key.replace('_', ' ')}: {_law(d)}")
    return lines


def _prediction(pred) -> List[str]:
    if not pred:
        return ["No prediction was made (the study has no held-out rung that ran after the others)."]
    body = [[p["run"], f"{p['predicted_top1']:.2f} [{p['low']:.2f}, {p['high']:.2f}]",
             "-" if p["measured_top1"] is None else f"{p['measured_top1']:.2f} ± {p['measured_std']:.2f}",
             "-" if p["error_points"] is None else f"{p['error_points']:+.2f}",
             "yes" if p["made_before_runs"] else "no"] for p in pred["predictions"]]
    errs = [abs(p["error_points"]) for p in pred["predictions"] if p["error_points"] is not None]
    lines = [f"Made at {pred['made_at']} from {pred['fitted_on']} runs of the other rungs (the joint law per "
             f"method), for the held-out rung `{pred['holdout']}` ({pred['holdout_params'] / 1e6:.2f}M parameters):",
             "", *_table(["run", "predicted top-1 % [95% band]", "measured (mean ± std)", "predicted - measured",
                          "made before the run started"], body)]
    if errs:
        lines += ["", f"Mean absolute error {mean(errs):.2f} points, largest {max(errs):.2f} (goal: at most 1.0)."]
    return lines


def _better(which: dict) -> str:
    return f"{which['excluded']} without the teacher's share, {which['included']} with it"


def markdown(result: dict, sc, figures) -> str:
    """The section, as markdown."""
    gains = _table(["method", "size", "params (M)", "epochs", "gain (points, 95% CI)", "seeds"],
                   [[g["method"], g["size"], f"{g['params'] / 1e6:.2f}", g["epochs"],
                     f"{g['gain']:+.2f} ± {g['gain_ci']:.2f}", g["seeds"]] for g in result["gains"]])
    optimal = _table(["method", "compute (FLOPs)", "optimal params (M)", "predicted top-1 %", "at the grid's edge"],
                     [[o["method"], _g(o["flops"]), f"{o['params'] / 1e6:.2f}", f"{o['top1']:.2f}",
                       "yes" if o["at_edge"] else "no"] for o in result["optimal_size"]])
    even = [f"- {b['method']} vs plain (teacher's share {_g(b['teacher_share_flops'])} FLOPs a run): laws cross at "
            f"{_g(b['excluded'])} FLOPs without the teacher's share, {_g(b['included'])} with it (- : no crossing "
            f"in {_g(b['range'][0])} to {_g(b['range'][1])}); better at the low end: {_better(b['better_at_lo'])}; "
            f"at the high end: {_better(b['better_at_hi'])}"
            for b in result["breakeven"]] or ["- no pair of compute laws to compare"]
    text = ["", "## Scaling", "",
            f"Ladder: {', '.join(sc.sizes)} (held out: `{sc.holdout}`); budgets: {sc.epochs} epochs; methods: "
            f"{', '.join(sc.methods)}. Compute is counted by `torch.utils.flop_counter`: the student's forward and "
            "backward per image times images seen; the teacher's share is its training spread over the students it "
            "taught plus its forwards (live, or the cache's recording spread over the runs that replay it).", "",
            *_runs_table(result["runs"]), "", "### Fits (95% bootstrap intervals)", "",
            "Error is 1 - top-1; laws: E(x) = a x^-b + c (Zhai et al. 2022) on the compute frontier and against "
            "parameters per budget; E(N, D) = e + A N^-alpha + B D^-beta (Hoffmann et al. 2022) over every run.", "",
            *_fits(result["fits"]), "", "### Prediction of the held-out rung", "", *_prediction(result["prediction"]),
            "", "### Distillation's gain over plain", "", *gains, "", "### Compute-optimal size (joint law)", "",
            *optimal, "", "### Where distillation stops paying", "", *even, "", "### Plots", "",
            *[f"![{f.stem}]({f.name})" for f in figures], ""]
    return "\n".join(text)
