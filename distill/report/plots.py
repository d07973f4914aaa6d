"""PNG figures for `distill compare`: learning curves, plain vs distilled, scaling."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from distill.report.stats import mean, std  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _final(summary: dict) -> list:
    """A run kept as its records alone (summary.json and config.yaml, as docs/ keeps a study's runs): its
    last evaluation, which summary.json holds, in metrics.jsonl's form."""
    return [{"epoch": summary.get("epochs", 1) - 1, "top1": summary["final_top1"]}] if "final_top1" in summary else []


def curves(variants: dict, out: Path) -> Path:
    """Test top-1 against training images seen, per student variant: the mean over seeds with a band
    of +-1 std. A variant that taught the others (its model is their teacher) is a dashed line at its
    final accuracy."""
    taught_by = {r["summary"].get("teacher") for runs in variants.values() for r in runs} - {None}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in variants.items():
        by_seen = {}
        for run in runs:
            per_epoch = run["summary"].get("epoch_images")
            for rec in run["metrics"] or _final(run["summary"]):
                if "top1" in rec:  # images seen at the end of the epoch; epochs where no size was recorded
                    by_seen.setdefault((rec["epoch"] + 1) * (per_epoch or 1), []).append(rec["top1"])
        if not by_seen:
            continue
        if runs[0]["summary"].get("student") in taught_by:
            ax.axhline(mean(by_seen[max(by_seen)]), ls="--", color="0.3", lw=1,
                       label=f"teacher {runs[0]['summary']['student']} ({name})")
            continue
        seen = sorted(by_seen)
        m = [mean(by_seen[e]) for e in seen]
        s = [std(by_seen[e]) for e in seen]
        ax.plot(seen, m, marker="o" if len(seen) < 15 else None, label=f"{name} (n={len(runs)})")
        ax.fill_between(seen, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.2)
    known = all(r["summary"].get("epoch_images") for runs in variants.values() for r in runs)
    ax.set(xlabel="training images seen" if known else "epoch", ylabel="test top-1 (%)",
           title="Test top-1 during training (mean, band: +-1 std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "top1_per_epoch.png")


def gains(rows: list, out: Path) -> Path:
    """Each method's difference in final top-1 from its plain baseline, with its 95% interval."""
    rows = [r for r in rows if "delta" in r]
    fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(rows) + 1.6))
    y = list(range(len(rows)))[::-1]
    ax.errorbar([r["delta"] for r in rows], y, xerr=[r["delta_ci"] for r in rows], fmt="o", capsize=5)
    ax.axvline(0.0, color="0.3", lw=1)
    ax.set_yticks(y, [f"{r['variant']} (n={r['n']}, {r['test']})" for r in rows])
    ax.set(xlabel="final top-1 minus plain (points), 95% interval", title="Gain over the plain student")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out / "gain_vs_plain.png")


def bars(rows: list, out: Path) -> Path:
    """Final top-1 per variant, mean with error bars (+-1 std over seeds), plain runs in grey."""
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows)), 4.5))
    names = [r["variant"] for r in rows]
    colors = ["0.6" if r["distill_type"] == "none" else "C0" for r in rows]
    ax.bar(names, [r["final_mean"] for r in rows], yerr=[r["final_std"] for r in rows], color=colors, capsize=6)
    lo = min(r["final_mean"] - r["final_std"] for r in rows)
    ax.set_ylim(max(0, lo - 5), min(100, max(r["final_mean"] + r["final_std"] for r in rows) + 3))
    ax.set(ylabel="final test top-1 (%)", title="Plain (grey) vs distilled: mean +-1 std over seeds")
    ax.tick_params(axis="x", rotation=20)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out / "plain_vs_distilled.png")


def scaling(rows: list, out: Path) -> list:
    """Top-1 against parameters and GFLOPs (log x), throughput against parameters; plain vs distilled."""
    paths = []
    groups = {"plain": [r for r in rows if r["distill_type"] == "none" and r["student"].startswith("distill_vit")],
              "distilled": [r for r in rows if r["distill_type"] != "none"]}
    for key, label, fname in [("params", "parameters", "scaling_top1_params.png"),
                              ("gflops", "forward GFLOPs per image", "scaling_top1_gflops.png"),
                              ("params", "parameters", "scaling_throughput.png")]:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for gname, group in groups.items():
            group = sorted((r for r in group if r.get(key)), key=lambda r: r[key])
            if not group:
                continue
            y = "img_per_s" if fname == "scaling_throughput.png" else "final_mean"
            err = None if y == "img_per_s" else [r["final_std"] for r in group]
            ax.errorbar([r[key] for r in group], [r[y] for r in group], yerr=err, marker="o", capsize=4, label=gname)
        ax.set_xscale("log")
        ax.set(xlabel=label, ylabel="training images/s" if fname == "scaling_throughput.png" else "final top-1 (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        paths.append(_save(fig, out / fname))
    return paths
