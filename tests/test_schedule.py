"""The learning-rate schedules, and a warmup-stable-decay fork against the run it stands for."""
import math

import pytest
from safetensors.torch import load_file

from conftest import PLAIN, needs_fmnist, run_main
from distill.schedule import lr_factor


def test_wsd_is_warmup_then_the_peak_then_its_cooldown():
    """Hägele et al. 2024's shape, by hand: 100 updates, 10 of warm-up, the last 20% a cooldown to the floor."""
    def f(u, shape="1-sqrt", floor=0.0):
        return lr_factor(u, 100, 10, floor, "wsd", 0.2, shape)

    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)  # linear warm-up, as cosine's
    assert f(10) == f(50) == f(80) == 1.0  # the stable phase, to the cooldown's first update
    assert f(90) == pytest.approx(1 - math.sqrt(0.5)) and f(90, "linear") == pytest.approx(0.5)
    assert f(100) == 0.0 and f(100, floor=0.01) == pytest.approx(0.01)
    # until the cooldown, the schedule does not depend on the run's length: what makes a fork exact
    assert all(lr_factor(u, 100, 10, 0.0, "wsd") == lr_factor(u, 400, 10, 0.0, "wsd") for u in range(81))
    assert lr_factor(50, 100, 10, 0.0) != lr_factor(50, 400, 10, 0.0)  # cosine's does


TINY = ["data.train_subset=256", "data.test_subset=128", "data.batch_size=64", "data.cutmix_alpha=0",
        "train.warmup_epochs=0", "train.lr=1e-3", "train.lr_base_batch=64", "train.schedule=wsd", "train.cooldown=0.5",
        "train.checkpoint_every=1", "train.keep_checkpoints=8", "train.mixed_precision=no", "train.log_with=[]"]


@needs_fmnist
@pytest.mark.slow
def test_a_cooldown_fork_is_the_shorter_run_bit_for_bit(tmp_path):
    """A 4-epoch wsd run (4 updates an epoch, cooldown from update 8) forked at its epoch-1 checkpoint into
    2 epochs (cooldown from update 4) ends with the weights of a 2-epoch wsd run trained from scratch; a
    fork from past the shorter run's cooldown start, of a cosine run, or with another lr is refused."""
    def train(name, *extra):
        return run_main("train", PLAIN, f"output_dir={tmp_path}", f"name={name}", *TINY, *extra)

    assert train("long", "train.epochs=4").returncode == 0
    checkpoints = sorted((tmp_path / "long" / "checkpoints").glob("step_*"))
    assert [c.name for c in checkpoints] == [f"step_{4 * e:09d}" for e in (1, 2, 3, 4)]
    fork = train("fork", "train.epochs=2", f"train.resume={checkpoints[0]}")
    assert fork.returncode == 0, fork.stderr[-2000:]
    assert train("direct", "train.epochs=2").returncode == 0
    forked, direct = (load_file(str(tmp_path / n / "student.safetensors")) for n in ("fork", "direct"))
    assert forked.keys() == direct.keys() and all(forked[k].equal(direct[k]) for k in forked)
    late = train("late", "train.epochs=2", f"train.resume={checkpoints[1]}")  # update 8 > 4: inside the cooldown
    assert late.returncode == 2 and "past update 4" in late.stderr and not (tmp_path / "late").exists()
    other = train("other", "train.epochs=2", "train.lr=2e-3", f"train.resume={checkpoints[0]}")
    assert other.returncode == 2 and "train.lr" in other.stderr
