"""The CUDA paths no CPU test can run: a resumed CUDA-graph run, the graphed step's host syncs, the logit
cache's record, DKD's warm-up weight inside a graph, a CMYK JPEG on nvJPEG, the device augmentation's
syncs. Run with the GPU visible: DISTILL_TEST_CUDA=1 pytest -m cuda (scripts/gpu_check.sh does)."""
import contextlib
import io
import sys
import warnings

import pytest
import torch

from conftest import ROOT, needs_cuda

sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402

pytestmark = needs_cuda


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    gpu_check.make_folder(folder, 256, 64, size=(32, 32), suffix=".png")
    return folder


def test_a_resumed_graphed_run_reads_the_moving_lr_and_ends_as_the_uninterrupted_one(small, tmp_path):
    """Stopped after step 5 of 8 and resumed: the lr the graph reads is on the GPU and the schedule's value;
    drop-path draws the same numbers (the capture's warm-up restores the generators): the same weights."""
    with contextlib.redirect_stdout(io.StringIO()):
        r = gpu_check.resume_check(small, tmp_path)
    assert r["resumed_device"].startswith("cuda") and r["resumed_lr"] == pytest.approx(r["stopped_lr"], abs=1e-12), r
    assert r["final_lr"][0] == pytest.approx(r["final_lr"][1], abs=1e-12) and r["weights_max_diff"] <= 1e-5, r


def test_graphed_steps_make_no_host_sync(small, tmp_path):
    r = gpu_check.graphed_syncs(small, tmp_path)
    assert r["syncs"] == 0, r


def test_the_logit_record_fills_pinned_host_memory_and_replays_exactly(tmp_path):
    from distill.train.cache import LogitCache
    for topk in (None, 3):
        cache = LogitCache(tmp_path, {"case": topk}, 0, 1, steps_per_epoch=3, topk=topk, num_classes=10)
        cache.start_epoch(0, 0, "cuda")
        logits = [torch.randn(4, 10, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
        for step, x in enumerate(logits):
            cache.put(step, x)
        record = next(iter(cache.record.values()))
        assert record.device.type == "cpu" and record.is_pinned()
        cache.end_epoch(0)
        assert cache.start_epoch(0, 0, "cuda")
        for step, x in enumerate(logits):
            if topk is None:
                assert torch.equal(cache.get(step), x)
            else:  # the top-k classes come back in order
                assert torch.equal(cache.get(step).topk(3).indices, x.float().topk(3).indices)


def test_dkds_warm_up_weight_reaches_a_captured_graph():
    """`set_progress` fills DKD's buffer in place: each replay reads the current weight."""
    from distill.recipe import load_config
    from distill.methods import build_criterion, build_method
    cfg = load_config(str(ROOT / "recipes/fashion_mnist/dkd_tiny.yaml"))
    method = build_method(cfg.distill, build_criterion(False, 0.0)).to("cuda")
    torch.manual_seed(0)
    logits, teacher = torch.randn(8, 10, device="cuda"), torch.randn(8, 10, device="cuda")
    targets = torch.randint(0, 10, (8,), device="cuda")
    method.set_progress(cfg.distill.dkd_warmup)  # weight 1
    full = method.term(logits, teacher, targets)[0].item()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        method.term(logits, teacher, targets)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = method.term(logits, teacher, targets)[0]
    for share in (0.25, 0.5, 1.0):
        method.set_progress(share * cfg.distill.dkd_warmup)
        graph.replay()
        assert loss.item() == pytest.approx(share * full, rel=1e-5), share


def test_a_cmyk_jpeg_on_nvjpeg_is_refused_or_decoded_in_the_right_colours(tmp_path):
    r = gpu_check.cmyk_decode(tmp_path)
    assert not r["accepted"] or r["max_abs_diff"] <= 16, r


def test_device_augmentation_waits_for_the_gpu_at_most_once_per_batch(tmp_path):
    """A DeiT batch from pinned host memory, augmented on the GPU under `set_sync_debug_mode("warn")`: one
    sync left, the fill colour made into a device tensor."""
    from distill.config import DataConfig
    from distill.data.augment import Normalize
    from distill.data.device.views import DeviceAugment, DeviceTrainViews
    from distill.data.sources import load_split
    gpu_check.make_folder(tmp_path, 32, 4, size=(80, 60))
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), img_size=32, crop="rrc", augment_on="device",
                     auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5, recount=3)
    split = load_split(cfg, train=True)
    for decode_on_device in (False, True):
        views = DeviceTrainViews(split, cfg, seed=1, decode_on_device=decode_on_device)
        batch = [t.pin_memory() for t in views.collate([views[(v, 0)] for v in range(32)])]
        augment = DeviceAugment(cfg, views.rand_augment, Normalize(split.mean, split.std).to("cuda"))
        augment(*batch)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                out = augment(*batch)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
        assert out[0].is_cuda and len(syncs) <= 1, syncs
