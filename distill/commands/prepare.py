"""`distill prepare SRC DST --max-side N --quality Q`: a resized copy of an image folder, made once.

FFCV's lesson: most of a worker's time goes to decoding pixels that the random-resized crop then
throws away. A copy whose long side is at most N decodes in proportion fewer pixels, every epoch of
every run, for a one-off cost. Images no larger than N are copied byte for byte; larger ones are
resized (Pillow's `thumbnail`: aspect kept, JPEG draft decoding and a reducing pass, then Lanczos)
and saved as JPEG at quality Q under the same relative path (suffix `.jpg`).

Every image is decoded whole before it is written, so a damaged file stops `prepare`, not a run.
Parallel over `--workers` processes; resumable: each file is written under a temporary name and
renamed when whole, files already there are skipped. `prepare.json` (source, N, Q) is written first
with `complete: false`, which `train` refuses (`distill.data.sources.imagefolder`), and last with the
copy's totals (images, resized, copied) and `complete: true`. A copy with other settings in DST is
refused. A run on the copy names it in its header line and `summary.json` (`data_copy`).
"""
from __future__ import annotations

import json
import os
import shutil
from multiprocessing import Pool
from pathlib import Path
from typing import Optional, Tuple

from PIL import Image

from distill.data.sources.imagefolder import IMAGE_EXTENSIONS, MANIFEST
from distill.errors import ConfigError, DataError, first_line


def _target(src_root: Path, dst_root: Path, path: Path, max_side: int) -> Tuple[Path, bool]:
    """Where `path` goes, and whether it is re-encoded (larger than max_side) or copied."""
    rel = path.relative_to(src_root)
    with Image.open(path) as im:
        resize = max(im.size) > max_side
    return (dst_root / rel.with_suffix(".jpg") if resize else dst_root / rel), resize


UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)  # what Pillow raises


def _one(job) -> Tuple[str, bool]:
    """Prepare one file; returns ('done' or 'skipped', whether it is resized), or (an error line, False)."""
    src_root, dst_root, path, max_side, quality = job
    try:
        out, resize = _target(src_root, dst_root, path, max_side)
        if out.exists():
            return "skipped", resize
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".tmp_{os.getpid()}_{out.name}")
        if resize:
            with Image.open(path) as im:
                im.draft("RGB", (max_side, max_side))  # DCT-domain downscale where JPEG allows it
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side), Image.LANCZOS, reducing_gap=3.0)
                im.save(tmp, "JPEG", quality=quality)
        else:
            with Image.open(path) as im:
                im.load()  # decoded whole: a damaged image is refused here, not in a run's first epoch
            shutil.copyfile(path, tmp)
        os.replace(tmp, out)
        return "done", resize
    except UNREADABLE as e:
        return f"{path}: {first_line(e)}", False


def check_prepare(src: Path, dst: Path, max_side: int, quality: int) -> dict:
    """The manifest this copy will have; ConfigError/DataError before anything is written."""
    if max_side < 16:
        raise ConfigError(f"--max-side {max_side} must be >= 16")
    if not 1 <= quality <= 100:
        raise ConfigError(f"--quality {quality} must be in 1..100")
    if not (src / "train").is_dir():
        raise DataError(f"prepare: {src}/train not found; SRC must be an image folder (SRC/train/<class>/*)")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise ConfigError(f"prepare: DST {dst} lies inside SRC {src}; choose another folder")
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"prepare: DST {dst} is a file; give a folder (a new one, or a copy made by prepare)")
    manifest = {"source": str(src.resolve()), "max_side": max_side, "quality": quality}
    old = dst / MANIFEST
    if old.exists():
        have = json.loads(old.read_text())
        if {k: have.get(k) for k in manifest} != manifest:
            raise ConfigError(f"prepare: {dst} holds a copy made with {have}; choose another DST or remove it")
    elif dst.exists() and any(dst.iterdir()) and not any(dst.rglob(".tmp_*")) and not (dst / "train").is_dir():
        raise ConfigError(f"prepare: {dst} is not empty and is not a copy of ours; choose another DST")
    return manifest


def prepare(src: Path, dst: Path, max_side: int, quality: int = 90, workers: Optional[int] = None) -> dict:
    """Make (or finish) the copy; returns the manifest written to DST/prepare.json, with `written` and
    `kept`: the files this call wrote and those it found already there."""
    manifest = check_prepare(src, dst, max_side, quality)
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    for split in (src / n for n in ("train", "val", "test") if (src / n).is_dir()):
        if not any(f.is_relative_to(split) for f in files):
            raise DataError(f"prepare: {split} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); add "
                            "some or remove the folder")
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"prepare: cannot make DST {dst} ({first_line(e)}); choose another folder") from None
    _write_manifest(dst, {**manifest, "complete": False})  # until the copy is whole: `train` refuses it
    for stale in dst.rglob(".tmp_*"):  # left by a copy that was stopped: redone below
        stale.unlink()
    jobs = [(src, dst, p, max_side, quality) for p in files]
    with Pool(workers or len(os.sched_getaffinity(0))) as pool:
        results = pool.map(_one, jobs, chunksize=64)
    failed = [r for r, _ in results if r not in ("done", "skipped")]
    if failed:
        raise DataError(f"prepare: {len(failed)} file(s) could not be read, first: {failed[0]}; "
                        "remove or replace them and run the same command again (done files are kept)")
    resized = sum(resize for _, resize in results)
    manifest.update(images=len(files), resized=resized, copied=len(files) - resized, complete=True)
    _write_manifest(dst, manifest)
    done = [r for r, _ in results].count("done")
    return {**manifest, "written": done, "kept": len(files) - done}


def _write_manifest(dst: Path, manifest: dict) -> None:
    tmp = dst / f".tmp_{MANIFEST}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, dst / MANIFEST)
