"""CRD (`distill.type=crd`) against RepDistiller's formulas (`crd/criterion.py`, `crd/memory.py`) written
out here with `math` on fixed inputs, and its memory bank as state: built by `wrap`, kept out of the
exported student, and restored bit for bit by a resume after `kill -9`."""
import math
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, in_fp32, needs_fmnist, run_cli
from distill.config import ConfigError
from distill.recipe import DistillConfig, load_config
from distill.methods import build_criterion, build_method
from distill.methods.crd import ContrastMemory, Embed
from distill.methods.taps import Taps, WithMethod
from distill.runs.checkpoint import latest_checkpoint

N, K, DIM, T, MOMENTUM = 10, 5, 4, 0.07, 0.5  # images, negatives, embedding width, temperature, momentum


def crd_method(**keys):
    cfg = DistillConfig(type="crd", crd_negatives=K, crd_dim=DIM, crd_temperature=T, crd_momentum=MOMENTUM, **keys)
    method = build_method(cfg, build_criterion(False, 0.0))
    torch.manual_seed(0)
    method.num_samples = N
    method.embed_s, method.embed_t = Embed(6, DIM), Embed(3, DIM)
    method.memory = ContrastMemory(DIM, N, T, MOMENTUM)
    return method


# ---- the reference, with lists and math ------------------------------------------------------------
def embed(w, b, x):
    """RepDistiller's Embed: linear, then divided by the l2 norm."""
    y = [sum(wi * xi for wi, xi in zip(row, x)) + bi for row, bi in zip(w, b)]
    norm = math.sqrt(sum(v * v for v in y))
    return [v / norm for v in y]


def nce(scores):
    """RepDistiller's ContrastLoss on rows (positive first) against noise 1 / N, eps 1e-7."""
    m, pn, eps = len(scores[0]) - 1, 1.0 / N, 1e-7
    total = sum(math.log(r[0] / (r[0] + m * pn + eps)) for r in scores)
    total += sum(math.log(m * pn / (p + m * pn + eps)) for r in scores for p in r[1:])
    return -total / len(scores)


def reference_step(state, f_s, f_t, y, idx):
    """One ContrastMemory.forward + CRDLoss: (crd_s, crd_t); updates `state` (banks v1 = student, v2 = teacher, Z)."""
    v1 = [embed(state["ws"], state["bs"], x) for x in f_s]
    v2 = [embed(state["wt"], state["bt"], x) for x in f_t]
    dot = lambda a, b: sum(p * q for p, q in zip(a, b))  # noqa: E731
    out_v2 = [[math.exp(dot(state["mem1"][j], v) / T) for j in rows] for v, rows in zip(v2, idx)]
    out_v1 = [[math.exp(dot(state["mem2"][j], v) / T) for j in rows] for v, rows in zip(v1, idx)]
    if state["z1"] < 0:
        state["z1"] = sum(map(sum, out_v1)) / (len(out_v1) * len(out_v1[0])) * N
    if state["z2"] < 0:
        state["z2"] = sum(map(sum, out_v2)) / (len(out_v2) * len(out_v2[0])) * N
    out_v1 = [[s / state["z1"] for s in r] for r in out_v1]
    out_v2 = [[s / state["z2"] for s in r] for r in out_v2]
    for bank, vs in (("mem1", v1), ("mem2", v2)):
        for i, v in zip(y, vs):
            row = [MOMENTUM * a + (1 - MOMENTUM) * b for a, b in zip(state[bank][i], v)]
            norm = math.sqrt(sum(a * a for a in row))
            state[bank][i] = [a / norm for a in row]
    return nce(out_v1), nce(out_v2)


def test_crd_term_and_memory_match_repdistiller_written_out():
    method = crd_method(crd_beta=0.8)
    state = {"ws": method.embed_s.linear.weight.tolist(), "bs": method.embed_s.linear.bias.tolist(),
             "wt": method.embed_t.linear.weight.tolist(), "bt": method.embed_t.linear.bias.tolist(),
             "mem1": method.memory.memory_s.tolist(), "mem2": method.memory.memory_t.tolist(), "z1": -1.0, "z2": -1.0}
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for step, y in enumerate([[3, 7, 0], [7, 1, 9]]):  # two steps: Z is set by the first and kept
        f_s, f_t = torch.randn(3, 6, generator=gen), torch.randn(3, 3, generator=gen)
        logits, labels = torch.randn(3, 5, generator=gen), torch.tensor([0, 4, 2])
        index = torch.tensor(y)
        method.set_progress(0.25 * (step + 1))
        rows = method.sample(index)
        assert rows[:, 0].tolist() == y and rows.shape == (3, 1 + K)
        out = method(Taps(logits, f_s, []), labels, Taps(None, f_t, []), index=index)
        crd_s, crd_t = reference_step(state, f_s.tolist(), f_t.tolist(), y, rows.tolist())
        base = torch.nn.functional.cross_entropy(logits, labels).item()
        diffs = [abs(out["crd_s"].item() - crd_s), abs(out["crd_t"].item() - crd_t),
                 abs(out["loss"].item() - (base + 0.8 * (crd_s + crd_t)))]
        diffs += [abs(a - b) for bank, mem in (("mem1", method.memory.memory_s), ("mem2", method.memory.memory_t))
                  for ra, rb in zip(state[bank], mem.tolist()) for a, b in zip(ra, rb)]
        worst = max(worst, *diffs)
        assert crd_s > 0 and crd_t > 0
    print(f"CRD vs RepDistiller written out: largest difference {worst:.2e}")
    assert worst < 1e-5


def test_crd_gradients_reach_both_heads_and_not_the_bank():
    method = crd_method()
    f_s = torch.randn(3, 6, requires_grad=True)
    out = method(Taps(torch.randn(3, 5), f_s, []), torch.tensor([0, 1, 2]), Taps(None, torch.randn(3, 3), []),
                 index=torch.tensor([1, 2, 3]))
    out["loss"].backward()
    assert f_s.grad.abs().sum() > 0
    assert method.embed_s.linear.weight.grad.abs().sum() > 0 and method.embed_t.linear.weight.grad.abs().sum() > 0
    assert not method.memory.memory_s.requires_grad


def test_repeated_image_updates_its_row_once_from_its_first_view():
    memory = ContrastMemory(DIM, N, T, 0.5)
    before = memory.memory_s.clone()
    v = torch.nn.functional.normalize(torch.randn(3, DIM), dim=1)
    memory.update(v, v, torch.tensor([4, 4, 2]))
    expected = before[4] * 0.5 + v[0] * 0.5
    torch.testing.assert_close(memory.memory_s[4], expected / expected.norm(), rtol=0, atol=1e-7)
    assert torch.equal(memory.memory_s[0], before[0])


def test_crd_wrap_puts_its_state_beside_the_student_and_out_of_it():
    import students  # noqa: F401
    from distill.models import create_model
    from teachers.teacher import Teacher

    method = build_method(DistillConfig(type="crd", crd_negatives=8), build_criterion(False, 0.0))
    student = create_model("distill_vit_tiny", num_classes=10, in_chans=1, img_size=32)
    teacher = Teacher(create_model("resnet10t", num_classes=10, in_chans=1), [0.5], [0.25])
    trainable, _ = method.wrap(student, teacher, 1, 32, num_samples=50)
    assert isinstance(trainable, WithMethod)
    state = trainable.state_dict()
    assert state["method.memory.memory_s"].shape == (50, 128) and state["method.embed_t.linear.weight"].shape == (128, 512)
    assert not any(k.startswith("method") for k in student.state_dict())


@pytest.mark.parametrize("override, message", [
    (["distill.cache=true"], "needs its teacher's features live"),
    (["distill.crd_negatives=0"], "distill.crd_negatives=0 must be > 0"),
    (["student.distilled=true"], "student.distilled=true needs a method that uses the distillation token"),
    (["data.mixup_alpha=0.8"], "needs one class per image"),
])
def test_crd_refuses_in_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(str(ROOT / "recipes/fashion_mnist/crd_tiny.yaml"), override)


# ---- a run killed after epoch 1 and resumed: identical weights and memory bank -----------------------
# 4 steps of 32 images an epoch; a random-weight ResNet-10t teacher at its own stem (a cheap forward)
TINY = ["data.train_subset=128", "data.test_subset=100", "data.batch_size=32", "train.epochs=2",
        "teacher.checkpoint=null", "teacher.model=resnet10t", "teacher.small_input_stem=false",
        "distill.crd_negatives=64", "train.lr_base_batch=32"]
NAME = "fashion_mnist_crd_tiny"


def train_args(out):
    return ["train", "recipes/fashion_mnist/crd_tiny.yaml", f"output_dir={out}", *TINY]


@needs_fmnist
@pytest.mark.slow
def test_crd_killed_after_epoch_1_resumes_to_identical_weights_and_bank(tmp_path):
    whole = run_cli(*train_args(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    cmd = [sys.executable, "-m", "distill", *in_fp32(train_args(tmp_path / "killed"))]  # as run_cli runs
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and latest_checkpoint(tmp_path / "killed" / NAME) is None:
        time.sleep(0.05)
    proc.kill()  # SIGKILL, once the epoch-1 checkpoint is complete
    proc.communicate(timeout=60)
    killed = tmp_path / "killed" / NAME
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    resumed = run_cli(*train_args(tmp_path / "killed"), "train.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr

    a, b = (load_file(str(d / NAME / "student.safetensors")) for d in (tmp_path / "whole", tmp_path / "killed"))
    assert a.keys() == b.keys() and not any(k.startswith("method") for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    banks = [load_file(str(latest_checkpoint(d / NAME) / "model.safetensors"))
             for d in (tmp_path / "whole", tmp_path / "killed")]
    first = load_file(str(sorted((killed / "checkpoints").iterdir())[0] / "model.safetensors"))
    for key in ("method.memory.memory_s", "method.memory.memory_t", "method.memory.z", "method.embed_s.linear.weight"):
        assert torch.equal(banks[0][key], banks[1][key]), key
    assert not torch.equal(first["method.memory.memory_s"], banks[1]["method.memory.memory_s"]), "the bank moves"


# ---- 2 processes against 1 on the same global batch -----------------------------------------------
@needs_fmnist
@pytest.mark.slow
def test_crd_on_two_processes_matches_one(tmp_path):
    """2 x 16 against 1 x 32: the bank is updated from the all-gathered batch and the negatives are drawn
    for the global batch, so both train the same weights and bank up to summation order."""
    import os

    args = [*train_args(tmp_path / "two")[1:], "train.epochs=1", "data.batch_size=16", "train.mixed_precision=no"]
    env = {**os.environ, "NPROC": "2", "MASTER_PORT": "29657", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
           "CUDA_VISIBLE_DEVICES": ""}
    two = subprocess.run([str(ROOT / "launch.sh"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli(*train_args(tmp_path / "one"), "train.epochs=1", "train.mixed_precision=no",
                  env={"OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (load_file(str(d / NAME / "student.safetensors")) for d in (tmp_path / "two", tmp_path / "one"))
    d = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    banks = [load_file(str(latest_checkpoint(d / NAME) / "model.safetensors")) for d in (tmp_path / "two", tmp_path / "one")]
    bank = max((banks[0][k] - banks[1][k]).abs().max().item() for k in banks[0] if k.startswith("method.memory"))
    print(f"CRD 1 vs 2 processes: |dw| median {d.median().item():.2e}, max {d.max().item():.2e}; bank max {bank:.2e}")
    # measured: max 6.8e-6, bank 3.1e-5; with each rank updating its bank from its own half alone (no
    # all-gather, DDP not broadcasting it): median 7.2e-6, max 2.2e-4, bank 0.25
    assert d.median().item() < 1e-5 and d.max().item() < 1e-4 and bank < 1e-3


def test_crd_trains_a_timm_vit_student_against_a_timm_cnn_teacher():
    """One step on timm's own ViT (its forward_head(pre_logits=True)) and a ResNet teacher: every student
    parameter and both heads reached; the bank rows of the batch moved, the others not."""
    from distill.models import create_model
    from teachers.teacher import Teacher

    torch.manual_seed(0)
    student = create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1, img_size=32, patch_size=8)
    teacher = Teacher(create_model("resnet10t", num_classes=10, in_chans=1), [0.5], [0.25])
    method = build_method(DistillConfig(type="crd", crd_negatives=16), build_criterion(False, 0.0))
    trainable, step_teacher = method.wrap(student, teacher, 1, 32, num_samples=20)
    bank = method.memory.memory_s.clone()
    x, index = torch.randn(4, 1, 32, 32), torch.tensor([3, 5, 11, 0])
    method.set_progress(0.5)
    out = method(trainable(x), torch.tensor([1, 2, 3, 4]), step_teacher(x), index=index)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["distill"] > 0
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    moved = (method.memory.memory_s != bank).any(dim=1).nonzero().flatten().tolist()
    assert moved == sorted(index.tolist())
