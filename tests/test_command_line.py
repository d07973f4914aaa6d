"""The command line as users type it: `key=value` overrides after a flag, and the figures the guides
give for a command checked against what the command does."""
import re

import pytest

from conftest import ROOT, PLAIN
from distill.cli import parse
from distill.report.study import plan

STUDY = "recipes/studies/fashion_mnist_cpu.yaml"


@pytest.mark.parametrize("argv, overrides", [
    (["bench", PLAIN, "--data", "train.epochs=1"], ["train.epochs=1"]),
    (["bench", PLAIN, "data.batch_size=8", "--steps", "4", "train.epochs=1"], ["data.batch_size=8", "train.epochs=1"]),
    (["study", STUDY, "--dry-run", "data.train_subset=64"], ["data.train_subset=64"]),
    (["train", PLAIN, "train.epochs=1"], ["train.epochs=1"]),
])
def test_overrides_are_taken_wherever_they_stand(argv, overrides):
    assert parse(argv).overrides == overrides  # at b7a7479: argparse's "unrecognized arguments"


@pytest.mark.parametrize("argv", [["bench", PLAIN, "--nope"], ["export", "runs/a", "out", "k=v"], ["bench", PLAIN, "--data", "-x=1"]])
def test_what_is_neither_a_flag_nor_an_override_is_argparses_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_the_studies_guide_counts_the_example_studys_runs():
    """docs/studies.md's comment on the example study's command says how many runs it makes."""
    line = next(ln for ln in (ROOT / "docs/studies.md").read_text().splitlines() if f"distill study {STUDY}" in ln and " runs" in ln)
    stated = int(re.search(r"# (\d+) runs", line).group(1))
    assert stated == len(plan(ROOT / STUDY)), line
