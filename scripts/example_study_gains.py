"""The gain table of docs/example_study/README.md, recomputed from the committed per-seed numbers:
the final top-1 of each of the study's runs (the Runs table of docs/example_study/report.md), of
the label-term-matched baseline's runs (docs/example_study/plain_nols/*/summary.json) and of the runs
added since, CRD, ViTKD and plain again (docs/example_study/crd_vitkd/*/summary.json; the plain runs
there are `plain_rerun`, ViTKD's baseline, trained at the same commit as it). Each gain is
paired by seed with the baseline the study pairs it with (`baseline:` in
recipes/studies/fashion_mnist_cpu.yaml): the paired 95% t-interval of `distill.report.stats`.

    python scripts/example_study_gains.py    # prints the table; tests/test_example_study.py checks the README
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.report.stats import mean, paired_diff_ci, std  # noqa: E402

DOCS = ROOT / "docs/example_study"
# the study's pairs (tests/test_study.py checks them against the study file)
BASELINE = {"hard": "plain", "soft": "plain", "kd": "plain_nols", "kd_standardized": "plain_nols",
            "dkd": "plain_nols", "dist": "plain", "feature": "plain", "plain_nols": "plain",
            "crd": "plain_nols", "vitkd": "plain_rerun", "plain_rerun": "plain"}
RERUN = {"plain": "plain_rerun", "teacher": "teacher_rerun"}  # the variants of crd_vitkd/ that ran before: their second runs


def finals() -> dict:
    """{variant: {seed: final top-1}} from report.md's Runs table and plain_nols' summary.json files."""
    out = {}
    runs = DOCS.joinpath("report.md").read_text().split("## Runs", 1)[1].split("##", 1)[0]
    for line in runs.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        m = re.fullmatch(r"(.+)_s(\d+)", cells[0])
        if m and len(cells) == 8:
            out.setdefault(m.group(1), {})[int(m.group(2))] = float(cells[4])
    for path in sorted([*DOCS.glob("plain_nols/*/summary.json"), *DOCS.glob("crd_vitkd/*/summary.json")]):
        s = json.loads(path.read_text())
        variant = path.parent.name.rsplit("_s", 1)[0]
        variant = RERUN.get(variant, variant) if path.parent.parent.name == "crd_vitkd" else variant
        out.setdefault(variant, {})[s["seed"]] = s["final_top1"]
    return out


def table(data: dict) -> str:
    rows = ["| variant | baseline | seeds | final top-1 % | gain over its baseline | paired 95% CI | by seed |",
            "|---|---|---|---|---|---|---|"]
    for variant in ("plain", "plain_nols", "plain_rerun", *[v for v in BASELINE if v not in ("plain_nols", "plain_rerun")]):
        finals_ = data[variant]
        cell = f"{mean(list(finals_.values())):.2f} ± {std(list(finals_.values())):.2f}"
        if variant not in BASELINE:
            rows.append(f"| {variant} | - | {len(finals_)} | {cell} | - | - | - |")
            continue
        base = data[BASELINE[variant]]
        seeds = sorted(set(finals_) & set(base))
        a, b = [finals_[s] for s in seeds], [base[s] for s in seeds]
        d, half = paired_diff_ci(a, b)
        by_seed = [x - y for x, y in zip(a, b)]
        rows.append(f"| {variant} | {BASELINE[variant]} | {len(seeds)} | {cell} | {d:+.2f} ± {half:.2f} | "
                    f"[{d - half:+.2f}, {d + half:+.2f}] | {min(by_seed):+.2f} to {max(by_seed):+.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(finals()))
