import torch
from timm.data import Mixup

from distill.data.augment import BatchAugment, Normalize, crop_flip
from distill.data.loader import ShardedBatches, eval_shard
from distill.data.seeds import epoch_order, epoch_salt, view_draws


def sample_draws(seed, epoch, index, n):
    return view_draws(index, epoch_salt(seed, epoch), n)


def test_draws_depend_only_on_seed_epoch_index():
    idx = torch.tensor([3, 10, 999])
    a = sample_draws(1, 2, idx, 3)
    assert torch.equal(a[1], sample_draws(1, 2, torch.tensor([10]), 3)[0])  # batch composition is irrelevant
    assert not torch.equal(a, sample_draws(1, 3, idx, 3))  # the epoch matters
    assert not torch.equal(a, sample_draws(2, 2, idx, 3))  # the seed matters
    assert a.min() >= 0 and a.max() < 2**32


def test_crop_flip_matches_a_hand_written_crop():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    draws = sample_draws(0, 0, torch.arange(64), 3)
    out = crop_flip(images, draws, padding=2, hflip=True)
    for i in range(64):
        padded = torch.nn.functional.pad(images[i], (2, 2, 2, 2))
        dy, dx, flip = int(draws[i, 0] % 5), int(draws[i, 1] % 5), int(draws[i, 2] & 1)
        ref = padded[:, dy:dy + 8, dx:dx + 8]
        assert torch.equal(out[i], ref.flip(-1) if flip else ref)
    offsets = {(int(d[0] % 5), int(d[1] % 5), int(d[2] & 1)) for d in draws}
    assert len(offsets) > 20  # the draws actually vary


def test_normalize():
    norm = Normalize((0.5,), (0.25,))
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    assert torch.allclose(norm(x).flatten(), torch.tensor([-2.0, 2.0]))


def test_two_processes_see_what_one_sees():
    n, B = 1000, 32
    one = ShardedBatches(n, 2 * B, rank=0, world_size=1, seed=5)
    two = [ShardedBatches(n, B, rank=r, world_size=2, seed=5) for r in range(2)]
    for s in (one, *two):
        s.set_epoch(3)
    for big, a, b in zip(one, *two):
        assert torch.equal(big, torch.cat([a, b]))
    assert len(one) == n // (2 * B)
    resumed = ShardedBatches(n, 2 * B, rank=0, world_size=1, seed=5)
    resumed.set_epoch(3, start_step=4)
    assert torch.equal(next(iter(resumed)), list(one)[4])
    assert not torch.equal(epoch_order(n, 5, 3), epoch_order(n, 5, 4))


def test_eval_shards_count_every_sample_once():
    for n, w in [(10, 3), (7, 2), (1, 4), (10000, 3)]:
        seen = [i for r in range(w) for i in eval_shard(n, r, w)]
        assert sorted(seen) == list(range(n))


def test_batch_augment_with_cutmix_is_reproducible():
    aug = BatchAugment(Normalize((0.5,), (0.5,)), 2, True, 10, 0.1, Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10))
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    labels, idx = torch.arange(8) % 10, torch.arange(8)
    x1, y1 = aug(images, labels, idx, seed=0, epoch=1, step=5)
    x2, y2 = aug(images, labels, idx, seed=0, epoch=1, step=5)
    x3, _ = aug(images, labels, idx, seed=0, epoch=1, step=6)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert y1.shape == (8, 10) and torch.allclose(y1.sum(1), torch.ones(8))
    assert not torch.equal(x1, x3)
