"""docs/scaling_cpu_v7a and _v7, the sixth held-out test: v7 differs from v6 only in what its study file
declares (its table, its size, its rate by a transfer rule instead of a sweep), that rate is the rule's
on v7a's committed sweep, and v7's table holds no size trained by an earlier study at 43.5M or more."""
import json
import math

import yaml

from conftest import ROOT


def _study(name):
    return yaml.safe_load((ROOT / f"recipes/studies/{name}.yaml").read_text())


def _params(study):
    return {r["size"]: r["params"] for r in map(json.loads, (ROOT / f"docs/{study}/report/runs.jsonl").open())}


def _held_params():
    made = json.loads((ROOT / "docs/scaling_cpu_v7/prediction.json").read_text())
    assert made["holdout"] == "w928d18"
    return made["holdout_params"]


def test_v7_differs_from_v6_only_in_its_table_its_size_and_a_rate_by_rule():
    """Against v6: the same overrides but for the teacher's rate (v6's `train.lr=1e-3` served only its
    sweepless teacher, which sets its own), the same teacher, methods and keys; v7 names its own table,
    size, budget and held-out rung, and each method's rate in place of v6's sweep."""
    v6, v7 = _study("scaling_cpu_v6"), _study("scaling_cpu_v7")
    assert [o for o in v6["overrides"] if not o.startswith("train.lr=")] == v7["overrides"]
    assert v6["runs"] == v7["runs"] and "train.lr=2e-3" in v7["runs"]["teacher"]["overrides"]
    s6, s7 = v6["scaling"], v7["scaling"]
    assert (s6.pop("lr_sweep"), s6.pop("lr_sweep_widen")) and "lr_sweep" not in s7
    for key in ("sizes", "budgets", "prior_runs", "holdout"):
        assert s6.pop(key) != s7.pop(key)
    for method in s7["methods"].values():
        assert method["overrides"].pop() == "train.lr=1.5625e-5"
    assert s7["methods"]["plain"].pop("overrides") == []  # v6's plain has none
    assert s6 == s7
    assert {k: v for k, v in v6.items() if k not in ("name", "overrides", "scaling")} == \
        {k: v for k, v in v7.items() if k not in ("name", "overrides", "scaling")}


def test_v7s_rate_is_the_transfer_rule_applied_to_v7as_sweep():
    """The rule in v7's study file: the grid rate (1.25e-4 times a power of 2) nearest in log to v7a's
    chosen rate times the parameter ratio; v7a's sweep bracketed its choice (no rate on an edge)."""
    lrs = json.loads((ROOT / "docs/scaling_cpu_v7a/lrs.json").read_text())["w448d18"]
    tried = sorted(t["lr"] for t in lrs["tried"])
    assert lrs["edge"] is None and tried[0] < lrs["chosen"] < tried[-1]
    assert lrs["chosen"] == max(lrs["tried"], key=lambda t: t["top1"])["lr"]
    ratio = _params("scaling_cpu_v7a")["w448d18"] / _held_params()
    rule = 1.25e-4 * 2.0 ** round(math.log2(lrs["chosen"] * ratio / 1.25e-4))
    rates = {float(o.split("=")[1]) for m in _study("scaling_cpu_v7")["scaling"]["methods"].values()
             for o in m["overrides"] if o.startswith("train.lr=")}
    assert rates == {rule} and rule == 1.5625e-5


def test_v7s_table_is_v4s_and_v7as_new_rung_so_no_size_it_holds_out_past_was_fitted():
    """v7 is fitted on v4's 162 runs and v7a's 6 of w448d18, its largest; the held-out w928d18 is at least 4x
    that; the sizes earlier studies trained beyond v4's (w704d18, w1440d18) are in none of its rows."""
    def rows(study):  # a prior row is fitted, whether or not its own study held it out
        return [{**json.loads(line), "holdout": None} for line in (ROOT / f"docs/{study}/report/runs.jsonl").open()]

    v4, v7a = rows("scaling_cpu_v4"), rows("scaling_cpu_v7a")
    new = [r for r in v7a if r not in v4]
    assert v7a[:len(v4)] == v4 and len(v7a) == len(v4) + len(new) == 168
    assert sorted((r["method"], r["seed"]) for r in new) == [(m, s) for m in ("kd", "plain") for s in range(3)]
    assert {r["size"] for r in new} == {"w448d18"}
    sizes = _params("scaling_cpu_v7a")
    assert max(sizes.values()) == sizes["w448d18"] and not {"w704d18", "w1440d18"} & set(sizes)
    assert _held_params() >= 4 * sizes["w448d18"]
