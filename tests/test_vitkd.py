"""ViTKD (`distill.type=vitkd`) against cls_KD's `ViTKDLoss` written out here on fixed tokens: mimicking
by per-block linear maps, generation from tokens masked by gather-and-unshuffle, summed squared errors."""
import pytest
import torch
import torch.nn.functional as F

import students  # noqa: F401
from distill.config import ConfigError
from distill.recipe import DistillConfig
from distill.methods import build_criterion, build_method
from distill.methods.taps import Taps, WithMethod
from distill.models import create_model
from teachers.teacher import Teacher

B, N, DS, DT = 2, 16, 6, 8  # images, patch tokens (a 4 x 4 grid), student and teacher widths


def vitkd(**keys):
    return build_method(DistillConfig(type="vitkd", **keys), build_criterion(False, 0.0))


def reference(m, low_s, low_t, high_s, high_t, noise, alpha, beta, lam):
    """cls_KD's forward: stacked low layers (B, 2, N, D), Linear per layer, MSE(sum) / B x alpha; masking by
    argsort of `noise`, keep the first int(N (1 - lam)), cat mask tokens, gather back; conv; masked MSE."""
    xc = torch.stack([m.align_low[i](low_s[:, i]) for i in range(2)], dim=1)
    loss_lr = F.mse_loss(xc, low_t, reduction="sum") / B * alpha
    x = m.align_high(high_s)
    keep = int(N * (1 - lam))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x_keep = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, DT))
    mat = torch.ones(B, N)
    mat[:, :keep] = 0
    mat = torch.gather(mat, 1, ids_restore)
    x_ = torch.cat([x_keep, m.mask_token.repeat(B, N - keep, 1)], dim=1)
    x = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, DT))
    x = m.generation(x.reshape(B, 4, 4, DT).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
    mask = mat.unsqueeze(-1)
    loss_gen = F.mse_loss(x * mask, high_t * mask, reduction="sum") / B * beta / lam
    return loss_lr, loss_gen


@pytest.mark.parametrize("lam", [0.5, 0.25])
def test_vitkd_terms_match_cls_kd_written_out(lam):
    torch.manual_seed(0)
    alpha, beta = 0.3, 0.2  # large weights: the terms are O(1), so a wrong factor shows
    m = vitkd(vitkd_alpha=alpha, vitkd_beta=beta, vitkd_mask_ratio=lam)
    # the modules `setup` builds, at small widths, built by hand (setup sizes them from models)
    m.align_low = torch.nn.ModuleList([torch.nn.Linear(DS, DT) for _ in range(2)])
    m.align_high, m.mask_token = torch.nn.Linear(DS, DT), torch.nn.Parameter(torch.randn(1, 1, DT))
    m.generation = torch.nn.Sequential(torch.nn.Conv2d(DT, DT, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(DT, DT, 3, padding=1))
    low_s, low_t = torch.randn(B, 2, N, DS), torch.randn(B, 2, N, DT)
    high_s, high_t = torch.randn(B, N, DS), torch.randn(B, N, DT)
    logits, labels = torch.randn(B, 5), torch.tensor([1, 3])
    torch.manual_seed(7)
    out = m(Taps(logits, None, [low_s[:, 0], low_s[:, 1], high_s]), labels,
            Taps(None, None, [low_t[:, 0], low_t[:, 1], high_t]))
    torch.manual_seed(7)
    loss_lr, loss_gen = reference(m, low_s, low_t, high_s, high_t, torch.rand(B, N), alpha, beta, lam)
    base = F.cross_entropy(logits, labels)
    diffs = [(out["vitkd_mimic"] - loss_lr).abs().item(), (out["vitkd_generate"] - loss_gen).abs().item(),
             (out["loss"] - (base + loss_lr + loss_gen)).abs().item()]
    print(f"ViTKD vs cls_KD written out (lambda {lam}): mimic {loss_lr.item():.4f}, generate {loss_gen.item():.4f}, "
          f"largest difference {max(diffs):.2e}")
    assert max(diffs) < 1e-4 and loss_gen.item() > 0 and loss_lr.item() > 0


def test_vitkd_builds_its_modules_for_vit_student_and_teacher():
    m = vitkd()
    student = create_model("distill_vit_tiny", num_classes=10, in_chans=1, img_size=32)
    teacher = Teacher(create_model("distill_vit_small", num_classes=10, in_chans=1, img_size=32), [0.5], [0.25])
    trainable, step_teacher = m.wrap(student, teacher, 1, 32, num_samples=64)
    assert isinstance(trainable, WithMethod)
    t_dim = teacher.model.embed_dim
    assert m.align_high.weight.shape == (t_dim, 256) and m.mask_token.shape == (1, 1, t_dim)
    x = torch.randn(2, 1, 32, 32)
    out = m(trainable(x), torch.tensor([0, 1]), step_teacher(x))
    out["loss"].backward()
    assert m.mask_token.grad is not None and m.align_low[0].weight.grad.abs().sum() > 0


def test_vitkd_refuses_a_cnn_teacher_in_one_line():
    student = create_model("distill_vit_tiny", num_classes=10, in_chans=1, img_size=32)
    teacher = Teacher(create_model("resnet10t", num_classes=10, in_chans=1), [0.5], [0.25])
    with pytest.raises(ConfigError, match="student and teacher must both be ViTs"):
        vitkd().wrap(student, teacher, 1, 32)


@pytest.mark.slow
def test_vitkd_trains_and_checkpoints_its_modules_beside_the_student(tmp_path):
    """One tiny epoch through the trainer with a random ViT teacher: both terms logged, the maps, mask token
    and convolutions in the checkpoint and changed by training, none of them in the exported student."""
    import json

    from safetensors.torch import load_file

    from conftest import FMNIST, run_main

    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed")
    res = run_main("train", "recipes/fashion_mnist/vitkd_tiny.yaml", f"output_dir={tmp_path}", "teacher.checkpoint=null",
                   "data.train_subset=128", "data.test_subset=100", "data.batch_size=32", "data.cutmix_alpha=0",
                   "train.epochs=1", "train.lr_base_batch=32", "distill.vitkd_alpha=0.01", "distill.vitkd_beta=0.01")
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "fashion_mnist_vitkd_tiny"
    (metrics,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics["loss_vitkd_mimic"] > 0 and metrics["loss_vitkd_generate"] > 0
    (ckpt,) = list((run / "checkpoints").iterdir())
    state = load_file(str(ckpt / "model.safetensors"))
    assert state["method.mask_token"].abs().sum() > 0, "the mask token (zeros at the start) trains"
    assert {"method.align_low.0.weight", "method.generation.0.weight"} <= state.keys()
    assert not any(k.startswith("method") for k in load_file(str(run / "student.safetensors")))
