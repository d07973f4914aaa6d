"""Compute, counted: a ViT's FLOPs against a count by hand, a model without storage counting what the model
itself counts, counting that changes nothing in the run, and the study's dry run that prints them."""
import pytest
import torch
import yaml

from conftest import ROOT
from distill.cli import main
from distill.models import create_model
from distill.models.cost import forward_gflops, storage_free, train_gflops


def test_vit_flops_match_a_count_by_hand():
    """A ViT of L blocks, width d, T tokens (16 patches + class), patch p, K classes, per image:
    linear layers 24 T d^2 per block (qkv 6, proj 2, MLP 16) + head 2 d K; attention 4 T^2 d per
    block; patch embedding 2 x 16 x p^2 x d. Training: the forward, twice the linear layers (input
    and weight gradients), the patch embedding's weight gradient only (the image needs none), and
    2.5 x the attention (the fused backward recomputes the scores: 5 matmuls against 2)."""
    L, d, T, p, K = 2, 64, 17, 8, 10
    linear = L * 24 * T * d * d + 2 * d * K
    attention = L * 4 * T * T * d
    patch = 2 * 16 * p * p * d
    model = create_model("distill_vit_tiny", num_classes=K, in_chans=1, img_size=32, embed_dim=d, depth=L, num_heads=2)
    assert forward_gflops(model, (1, 32, 32)) * 1e9 == linear + attention + patch
    assert train_gflops(model, (1, 32, 32)) * 1e9 == 3 * linear + 3.5 * attention + 2 * patch


@pytest.mark.parametrize("name, kwargs", [
    ("distill_vit_tiny", dict(in_chans=1, img_size=32, embed_dim=64, depth=2, num_heads=2)),  # fused attention
    ("resnet10t", dict(in_chans=1)),
    ("swin_tiny_patch4_window7_224", dict(in_chans=3, img_size=64, window_size=4)),
])
@pytest.mark.filterwarnings("error:Accessing the data pointer of FakeTensor")  # deepcopy of one did
def test_a_model_without_storage_counts_what_the_model_itself_counts(name, kwargs):
    """What a study plans with (estimate.size_shape) is what the run will count: the parameters, and the
    training FLOPs with the CPU's fused attention (the meta device alone counts its math path instead)."""
    real = create_model(name, num_classes=10, **kwargs)
    fake = storage_free(lambda: create_model(name, num_classes=10, **kwargs))
    assert all(isinstance(t, torch._subclasses.fake_tensor.FakeTensor) for t in [*fake.parameters(), *fake.buffers()])
    shape = (kwargs.get("in_chans", 3), kwargs.get("img_size", 32), kwargs.get("img_size", 32))
    assert sum(p.numel() for p in fake.parameters()) == sum(p.numel() for p in real.parameters())
    assert train_gflops(fake, shape) == train_gflops(real, shape)
    assert forward_gflops(fake, shape) == forward_gflops(real, shape)


def test_counting_training_flops_changes_nothing_in_the_run():
    model = create_model("resnet10t", num_classes=10, in_chans=1)  # BatchNorm: training mode would move its stats
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train_gflops(model, (1, 32, 32))
    assert torch.equal(torch.rand(3), expected)  # the random stream the run draws from next
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_dry_run_prints_each_runs_flops_by_hand_and_the_total(tmp_path, capsys):
    """FLOPs of a run = training FLOPs per image (the hand count above) x its images; nothing runs.
    In-process (`main` returns the exit status): a subprocess would only add ~6 s of imports."""
    recipe = str(ROOT / "recipes/fashion_mnist/plain_tiny.yaml")
    study = {"name": "dry", "output_dir": str(tmp_path), "seeds": [0],
             "overrides": ["data.train_subset=300", "data.batch_size=100", "train.mixed_precision=no", "train.epochs=2"],
             "runs": {"plain_a": {"recipe": recipe, "overrides": ["student.embed_dim=64", "student.depth=2",
                                                                  "student.num_heads=2"]},
                      "plain_b": {"recipe": recipe, "overrides": ["student.embed_dim=96", "student.depth=2",
                                                                  "student.num_heads=3"]}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    status = main(["study", str(tmp_path / "s.yaml"), "--dry-run"])
    out, err = capsys.readouterr()
    assert status == 0, err[-2000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("plain_a_s0 "))
    L, d, T, K = 2, 64, 17, 10
    per_image = 3 * (L * 24 * T * d * d + 2 * d * K) + 3.5 * L * 4 * T * T * d + 2 * 2 * 16 * 64 * d
    images = 2 * 300  # 2 epochs of 3 full batches of 100
    assert float(line.split()[3]) == pytest.approx(per_image * images, rel=1e-3)
    assert f"{images:,}" in line and "total (2 runs)" in out and "left (" not in out
    assert not (tmp_path / "dry").exists()  # a dry run writes nothing
    # a study resumed: a run with its summary.json is marked complete, and what is left is totalled apart
    (tmp_path / "dry/plain_a_s0").mkdir(parents=True)
    (tmp_path / "dry/plain_a_s0/summary.json").write_text("{}")
    assert main(["study", str(tmp_path / "s.yaml"), "--dry-run"]) == 0
    lines = capsys.readouterr()[0].splitlines()
    done, other = (next(ln for ln in lines if ln.startswith(f"plain_{s}_s0 ")) for s in "ab")
    assert done.endswith("  complete") and not other.endswith("complete")
    left = next(ln for ln in lines if ln.startswith("left (1 runs)"))
    assert left.split()[3:] == other.split()[3:6]  # student FLOPs, teacher FLOPs, hours: the one run left
