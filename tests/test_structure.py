"""The engine's shape: one step (eager and graphed), one teacher-logit source, one user error, and
the bugs a new user hit, each with a test that failed before its fix."""
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.data import Mixup
from accelerate import Accelerator
from safetensors.torch import load_file
from timm.loss import SoftTargetCrossEntropy

from conftest import PLAIN, ROOT, SHORT, in_fp32, needs_fmnist, run_cli, run_main
from distill.data.augment import BatchAugment, Normalize
from distill.cli import main
from distill.data.seeds import epoch_salt
from distill.train.build import build_optimizer
from distill.train.cache import LogitCache
from distill.config import TrainConfig
from distill.errors import CacheError, UserError
from distill.data.loader import DeviceBatches, ShardedBatches
from distill.recipe import DistillConfig
from distill.methods import build_method
from distill.train.step import TrainStep, accelerate_hooks, graph_hooks
from distill.train.teacher_logits import TeacherLogits
from distill.train.timing import IntervalRate
from distill.models import create_model

TINY = ["data.train_subset=256", "data.test_subset=100", "data.batch_size=32", "train.epochs=1",
        "train.log_every=4", "train.warmup_epochs=0"]


def _parts(device="cpu", distilled=True, seed=0):
    torch.manual_seed(seed)
    model = create_model("distill_vit_tiny", num_classes=10, in_chans=1, img_size=16, patch_size=4,
                         distilled=distilled).to(device)
    if distilled:
        model.set_distilled_training(True)
    torch.manual_seed(1)
    teacher = create_model("resnet10t", num_classes=10, in_chans=1).to(device).eval().requires_grad_(False)
    augment = BatchAugment(Normalize([0.3], [0.3]).to(device), 2, True, 10, 0.1,
                           Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10))
    criterion = build_method(DistillConfig(type="hard" if distilled else "none"), SoftTargetCrossEntropy())  # CutMix: soft targets
    g = torch.Generator().manual_seed(2)
    batch = (torch.randint(0, 256, (8, 1, 16, 16), generator=g, dtype=torch.uint8).to(device),
             torch.randint(0, 10, (8,), generator=g).to(device), torch.arange(8, device=device))
    return model, teacher, augment, criterion, batch


def _run_steps(step, augment, batch, n=3):
    images, labels, index = batch
    for s in range(n):
        mix = augment.mix_params(0, 0, s, images.shape).to(images.device)
        out = step(images, labels, index, epoch_salt(0, 0), mix)
    return out


def test_one_step_function_with_accelerate_and_graph_hooks_agrees_on_cpu():
    """The step body the CUDA graph captures (plain-torch hooks) trains exactly as the eager,
    Accelerate-driven one: same weights after three steps with CutMix, a teacher and clipping."""
    weights = []
    for kind in ("accelerate", "graph"):
        model, teacher, augment, criterion, batch = _parts()
        opt = build_optimizer(model, TrainConfig(), 1e-3)
        if kind == "accelerate":
            acc = Accelerator(cpu=True)
            model_p, opt_p = acc.prepare(model, opt)
            step = TrainStep(model_p, augment, criterion, teacher, opt_p, accelerate_hooks(acc, model_p, 1.0))
        else:
            step = TrainStep(model, augment, criterion, teacher, opt, graph_hooks(model, 1.0, None))
        terms, t_logits = _run_steps(step, augment, batch)
        assert set(terms) == {"loss", "base", "distill"} and t_logits.shape == (8, 10)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    a, b = weights
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs)")
def test_graphed_step_matches_eager_on_gpu():
    from distill.train.graphed import GraphedStep, make_capturable

    weights = []
    for graphed in (False, True):
        model, teacher, augment, criterion, batch = _parts("cuda")
        opt = build_optimizer(model, TrainConfig(), 1e-3)
        make_capturable(opt, torch.device("cuda"))  # the same optimizer kernels in both
        step = TrainStep(model, augment, criterion, teacher, opt, graph_hooks(model, 1.0, None))
        _run_steps(GraphedStep(step) if graphed else step, augment, batch, n=5)
        torch.cuda.synchronize()
        weights.append({k: v.float().clone() for k, v in model.state_dict().items()})
    a, b = weights
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_teacher_logits_live_record_replay(tmp_path):
    teacher = torch.nn.Linear(4, 3).eval().requires_grad_(False)
    views = torch.randn(2, 4)
    cache = LogitCache(tmp_path, {"k": 1}, rank=0, world_size=1, steps_per_epoch=2)
    source = TeacherLogits(teacher, cache, torch.no_grad)
    assert TeacherLogits(teacher, None, torch.no_grad).cached(0, lambda: views) is None  # live: the step runs it
    source.start_epoch(0, 0, "cpu")
    assert source.mode == "record" and source.cached(0, lambda: views) is None
    for s in range(2):
        source.observe(s, teacher(views) + s)
    source.end_epoch(0)
    source.start_epoch(0, 0, "cpu")
    assert source.mode == "replay"
    assert torch.equal(source.cached(0, lambda: views), teacher(views))  # checked live: it matches
    assert torch.equal(source.cached(1, lambda: 1 / 0), teacher(views) + 1)  # later steps: no check
    source.start_epoch(0, 0, "cpu")
    with pytest.raises(CacheError, match="epoch 0 step 0"):  # a stale cache is caught at the first step
        source.cached(0, lambda: views + 1)


def test_every_user_error_is_one_userror_and_the_cli_catches_only_that():
    from distill import errors

    kinds = {n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, Exception) and c is not UserError}
    assert kinds == {"ConfigError", "DataError", "TeacherError", "CheckpointError", "DivergenceError", "CacheError",
                     "OutOfSpaceError"}  # a new kind is added here on purpose, not by accident
    assert all(issubclass(getattr(errors, name), UserError) for name in kinds)
    tree = ast.parse((ROOT / "distill" / "cli.py").read_text())
    caught = {ast.unparse(h.type) for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler) and h.type is not None}
    assert "UserError" in caught and "Exception" not in caught


# timm's Mixup draw (see data/augment.py's docstring); torch's only way to stop a loader's workers;
# aten operator names (`torch.ops.aten._scaled_dot_product...`), which are not private members
_ALLOWED_PRIVATE = ("._params_per_batch", "._params_per_elem", "._shutdown_workers")


def _private_reaches(path: Path) -> list:
    """`x._name` on another module's object, `from m import _name`, and `getattr(x, "_name")`."""
    bad = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__"):
            text = ast.unparse(n)
            if not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")) \
                    and not text.endswith(_ALLOWED_PRIVATE) and not text.startswith("torch.ops."):
                bad.append(text)
        elif isinstance(n, ast.ImportFrom):  # timm.layers exports `_assert` (fx-traceable) for models like ours
            bad += [f"from {n.module} import {a.name}" for a in n.names if a.name.startswith("_")
                    and (n.module, a.name) != ("timm.layers", "_assert")]
        elif isinstance(n, ast.Call) and ast.unparse(n.func) in ("getattr", "hasattr", "setattr") and len(n.args) > 1 \
                and isinstance(n.args[1], ast.Constant) and str(n.args[1].value).startswith("_") \
                and not str(n.args[1].value).startswith("__") and "." + n.args[1].value not in _ALLOWED_PRIVATE:
            bad.append(ast.unparse(n))
    return bad


def test_no_module_reaches_into_anothers_privates(tmp_path):
    """Over every module of the packages and the scripts; the check itself catches each form."""
    sample = tmp_path / "sample.py"
    sample.write_text("from m import _x\ngetattr(ds, '_fingerprint')\nobj._y\nself._z\n")
    assert _private_reaches(sample) == ["from m import _x", "getattr(ds, '_fingerprint')", "obj._y"]
    files = [p for d in ("distill", "students", "teachers", "scripts") for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 50
    for path in files:
        assert not _private_reaches(path), f"{path.relative_to(ROOT)}: {_private_reaches(path)}"


def test_no_import_cycle_and_files_and_functions_stay_short():
    """`python scripts/layout.py` prints the graph; here: no cycle, files <= 400 lines, functions <= 60."""
    spec = __import__("importlib.util").util.spec_from_file_location("layout", ROOT / "scripts" / "layout.py")
    layout = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    known = layout.modules()
    graph = {name: layout.imports(name, path, known) for name, path in known.items()}
    assert graph["distill.recipe"] >= {"distill.methods", "distill.data.sources"}  # the loader reads the registries
    assert layout.cycles(graph) == []
    assert layout.cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]  # the check can fail
    assert max(len(p.read_text().splitlines()) for p in known.values()) <= 400
    assert layout.longest_function(known)[0] <= 60, layout.longest_function(known)


def test_config_is_a_leaf_and_the_command_line_starts_without_torch():
    """config imports no registry (a type-only import counts too), and `--help`, an unknown key (a
    method's included), an unknown method and a missing recipe are refused before torch, timm or
    torchvision is imported."""
    spec = __import__("importlib.util").util.spec_from_file_location("layout", ROOT / "scripts" / "layout.py")
    layout = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    known = layout.modules()
    assert layout.imports("distill.config", known["distill.config"], known) == {"distill.errors"}
    probe = ("import sys\nfrom distill.cli import main\n"
             "for argv in (['--help'], ['train', '--help'], ['train', 'no/such.yaml'],\n"
             "             ['config', 'recipes/fashion_mnist/plain_tiny.yaml', 'train.nope=1'],\n"
             "             ['config', 'recipes/fashion_mnist/kd_tiny.yaml', 'distill.kd_nope=1'],\n"
             "             ['config', 'recipes/fashion_mnist/kd_tiny.yaml', 'distill.type=kdd']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'timm', 'torchvision', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
    assert out.stderr.count("error: ") == 4, out.stderr  # the four refusals, one line each
    assert "distill.kd_nope" in out.stderr and "distill.type='kdd'" in out.stderr, out.stderr


def test_the_methods_files_declare_what_the_registry_holds():
    """the command line's first check reads each method's name and keys from its file (no import);
    it must read what the registry holds, key by key, or a valid key would be refused."""
    from distill.catalog import declared_methods
    from distill.methods import METHODS

    built_in = {name: tuple(m.keys) for name, m in METHODS.items() if m.__module__.startswith("distill.methods.")}
    assert declared_methods() == built_in  # plugins a test loaded before are not the package's


def test_interval_rate_counts_the_steps_it_covers():
    """the end of an epoch (or the first interval after a resume) is shorter than log_every."""
    t = iter([0.0, 10.0, 12.0])
    rate = IntervalRate(images_per_step=32, step=3, clock=lambda: next(t))
    assert rate.read(13) == pytest.approx(10 * 32 / 10.0)  # 10 steps since the resume at step 3
    assert rate.read(15) == pytest.approx(2 * 32 / 2.0)  # a 2-step tail, not log_every steps


def test_host_resident_batches_reach_the_training_device():
    """with data.device_resident=false, batches stay on the host while Normalize sits on the
    device. The meta device stands in for a GPU: batches must be moved to it."""
    class Split:
        images, labels = torch.zeros(8, 1, 4, 4, dtype=torch.uint8), torch.arange(8)
    sampler = ShardedBatches(8, 4, 0, 1, seed=0)
    batches = DeviceBatches(Split(), sampler, torch.device("meta"), storage="cpu")
    assert batches.images.device.type == "cpu"  # stored on the host
    assert all(t.device.type == "meta" for b in batches for t in b)
    assert all(t.device.type == "meta" for b in DeviceBatches(Split(), None, "meta", 3, "cpu").iter_range(range(8))
               for t in b)


@needs_fmnist
@pytest.mark.parametrize("bad", ["student.patch_size=5", "data.img_size=30"])
def test_patch_size_that_does_not_divide_the_image_is_one_line(tmp_path, bad, capsys):
    """these passed the config and ended in an AssertionError traceback (exit 1). In-process:
    `main` returns the exit status, and an AssertionError would escape it."""
    assert main(in_fp32(["train", str(ROOT / PLAIN), f"output_dir={tmp_path}", *TINY, bad])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "divisible" in err, err[-2000:]
    assert not list(tmp_path.iterdir())  # nothing written


@needs_fmnist
@pytest.mark.slow
def test_bench_writes_no_checkpoint(tmp_path):
    """`distill bench` with train.checkpoint_every_steps wrote checkpoints."""
    res = run_main("bench", PLAIN, f"output_dir={tmp_path}", *TINY, "train.checkpoint_every_steps=2",
                  "--steps", "2", "--warmup", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert not list(tmp_path.rglob("checkpoints")) and not list(tmp_path.rglob("*.safetensors"))


@needs_fmnist
@pytest.mark.slow
def test_run_killed_before_its_summary_resumes_to_the_same_result(short_run, tmp_path):
    """killed after the last checkpoint, before summary.json: resumed with final_top1 null.
    (Resumed in a fresh process, as `short_run` ran: its evaluation must match to the last image.)"""
    run = tmp_path / short_run.name
    shutil.copytree(short_run, run)
    (run / "summary.json").unlink()
    (run / "student.safetensors").unlink()
    res = run_cli("train", PLAIN, f"output_dir={tmp_path}", *SHORT, "train.resume=auto")
    assert res.returncode == 0, res.stderr[-2000:]
    before, after = (json.loads((d / "summary.json").read_text()) for d in (short_run, run))
    assert after["final_top1"] == before["final_top1"] and after["best_top1"] == before["best_top1"]
    a, b = (load_file(str(d / "student.safetensors")) for d in (short_run, run))
    assert all(torch.equal(a[k], b[k]) for k in a)
    res = run_main("compare", short_run, run)
    assert res.returncode == 0, res.stderr[-2000:]


@needs_fmnist
@pytest.mark.slow
def test_resume_auto_without_a_checkpoint_says_so(tmp_path):
    """train.resume=auto on a folder without a checkpoint started over silently."""
    res = run_main("train", PLAIN, f"output_dir={tmp_path}", *TINY, "name=r")
    assert res.returncode == 0, res.stderr[-2000:]
    shutil.rmtree(tmp_path / "r" / "checkpoints")
    (tmp_path / "r" / "summary.json").unlink()
    res = run_main("train", PLAIN, f"output_dir={tmp_path}", *TINY, "name=r", "train.resume=auto")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [x for x in (res.stdout + res.stderr).splitlines() if "no complete checkpoint" in x]
    assert len(lines) == 1 and "starting from the beginning" in lines[0]


@needs_fmnist
@pytest.mark.slow
def test_compiled_run_saves_the_bare_student_and_evaluates(tmp_path):
    """train.compile=true saved `_orig_mod.` keys and `distill eval` stopped with a traceback."""
    res = run_cli("train", PLAIN, f"output_dir={tmp_path}", *TINY, "data.train_subset=64", "data.test_subset=64",
                  "train.compile=true", "name=c")
    assert res.returncode == 0, res.stderr[-2000:]
    weights = load_file(str(tmp_path / "c" / "student.safetensors"))
    assert not [k for k in weights if k.startswith("_orig_mod.")]
    res = run_cli("eval", tmp_path / "c")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["top1"] == json.loads((tmp_path / "c" / "summary.json").read_text())["final_top1"]


@needs_fmnist
def test_bench_reference_on_a_streamed_dataset_is_one_line(tmp_path, capsys):
    """`--reference` reads an in-memory split; on an image folder it ended in an AttributeError traceback."""
    from PIL import Image

    for split in ("train", "val"):
        for i in range(40):
            path = tmp_path / "imgs" / split / str(i % 2) / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (i, 2 * i, 3 * i)).save(path)
    assert main(in_fp32(["bench", str(ROOT / PLAIN), "data.name=imagefolder", f"data.root={tmp_path / 'imgs'}",
                         "data.batch_size=8", "data.num_workers=0", f"output_dir={tmp_path}", "--steps", "1",
                         "--warmup", "1", "--reference"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--reference" in err, err[-2000:]


def test_every_test_the_docs_name_exists():
    """A page that points at `tests/<file>.py::<test>` points at a test that is there (a renamed test leaves none)."""
    import re

    named = {(m[0], m[1]) for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
             for m in re.findall(r"(tests/\w+\.py)::(\w+)", page.read_text())}
    assert len(named) > 5
    missing = [f"{f}::{t}" for f, t in sorted(named)
               if not re.search(rf"^(async )?def {t}\(", (ROOT / f).read_text() if (ROOT / f).exists() else "", re.M)]
    assert missing == []
