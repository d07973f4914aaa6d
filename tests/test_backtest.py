"""`distill fit --backtest R`: every size a table can predict from the sizes R times below it, one fit
each. On runs drawn from a known law the law predicts itself and beats persistence, whose error is
computed here from the law by hand; the sizes chosen, and the refusals, one line each."""
import json
import math

import numpy as np
import pytest

from distill.cli import main
from distill.errors import ConfigError
from distill.report.backtest import backtest, targets

SIZES = (1e5, 2e5, 4e5, 8e5, 1.6e6, 3.2e6, 6.4e6)
IMAGES = (2e4, 4e4, 8e4)


def law(n, d):  # Hoffmann et al.'s form, in units of the smallest n and d
    return 0.1 + 0.3 * (n / 1e5) ** -0.4 + 0.5 * (d / 2e4) ** -0.6


def _rows():
    rng = np.random.default_rng(0)
    return [{"method": "plain", "params": n, "images": d, "flops": 6.0 * n * d, "seed": s,
             "top1": 100 * (1 - law(n, d) * math.exp(1e-4 * rng.standard_normal())), "holdout": n == 6.4e6}
            for n in SIZES for d in IMAGES for s in (0, 1)]


def test_each_size_is_predicted_from_the_sizes_a_ratio_below_it():
    rows = _rows()
    assert targets(rows, 4) == [1.6e6, 3.2e6, 6.4e6]  # 3 sizes at or below 4e5, 8e5, 1.6e6
    assert targets(rows, 8) == [3.2e6, 6.4e6]
    assert targets([r for r in rows if r["params"] != 2e5], 4) == [3.2e6, 6.4e6]
    cut = [dict(r, unique_images=2e3 if r["params"] == 1e5 else 2e4) for r in rows]  # 1e5: 10 to 40 epochs
    assert targets(cut, 4) == [1.6e6, 3.2e6, 6.4e6] and targets(cut, 4, max_epochs=4) == [3.2e6, 6.4e6]
    with pytest.raises(ConfigError, match="has no unique_images"):
        backtest(rows, 4, 10, max_epochs=4)
    result = backtest(rows, 4, bootstrap=10, forms={"plain": "chinchilla"})
    assert [(g["target"], g["fitted_up_to"], g["ratio"]) for g in result["gaps"]] == [
        (1.6e6, 4e5, 4.0), (3.2e6, 8e5, 4.0), (6.4e6, 1.6e6, 4.0)]
    for g in result["gaps"]:
        e = g["errors"]["plain"]
        persistence = np.mean([abs(100 * (law(g["fitted_up_to"], d) - law(g["target"], d))) for d in IMAGES])
        assert e["cells"] == 3 and e["persistence"] == pytest.approx(persistence, abs=0.01)
        assert e["predicted"] < 0.05 < e["persistence"]
    s = result["summary"]["plain"]
    assert (s["gaps"], s["within_1"], s["below_persistence"]) == (3, 3, 3)


def test_the_command_writes_the_backtest_and_refuses_what_it_cannot_do(tmp_path, capsys):
    table = tmp_path / "runs.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    out = tmp_path / "bt"
    assert main(["fit", str(table), "--out", str(out), "--backtest", "4", "--bootstrap", "10",
                 "--form", "chinchilla"]) == 0
    text = (out / "backtest.md").read_text()
    assert text.count("| plain |") == 4 and "| 6.4e+06 | 1.6e+06 | 4.00 | plain | chinchilla (5) | 3 |" in text
    assert json.loads((out / "backtest.json").read_text())["settings"]["forms"] == {"plain": "chinchilla"}
    assert main(["fit", str(table), "--out", str(tmp_path / "chosen"), "--backtest", "4", "--bootstrap", "10"]) == 0
    chosen = json.loads((tmp_path / "chosen" / "backtest.json").read_text())  # 3 sizes below 1.6e6: no choice
    assert chosen["gaps"][0]["errors"] == {} and chosen["summary"]["plain"]["gaps"] == 2
    assert "| 1.6e+06 | 4e+05 | 4.00 | plain | not fitted: " in (tmp_path / "chosen" / "backtest.md").read_text()
    for args, says in ((["--backtest", "64"], "no size of the table has 3 sizes"),
                       (["--backtest", "4", "--holdout-params", "6.4e6"], "leave out --holdout-params"),
                       (["--backtest", "0.5"], "a ratio >= 1")):
        assert main(["fit", str(table), "--out", str(tmp_path / "no"), "--bootstrap", "10", *args]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "no").exists()
    with pytest.raises(ConfigError, match="a ratio >= 1"):
        backtest(_rows(), 0.5, 10)
