"""`distill prepare`: a resized copy of an image folder, made once, resumable, recorded by runs."""
import json

import numpy as np
import pytest
from PIL import Image

from distill.cli import main
from distill.config import DataConfig
from distill.runs.records import data_copy


@pytest.fixture
def src(tmp_path):
    """train/ with 3 images of 120x90 and one of 20x20 (a PNG), val/ with one of 120x90."""
    rng = np.random.default_rng(0)
    for split, name, size in [("train", "a/0.jpg", (120, 90)), ("train", "a/1.jpg", (90, 120)),
                              ("train", "b/2.jpg", (120, 90)), ("train", "b/3.png", (20, 20)),
                              ("val", "a/4.jpg", (120, 90))]:
        path = tmp_path / "src" / split / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=95)
    return tmp_path / "src"


def test_prepare_resizes_the_large_keeps_the_small_and_resumes(src, tmp_path, capsys):
    dst = tmp_path / "dst"
    assert main(["prepare", str(src), str(dst), "--max-side", "64", "--quality", "85", "--workers", "2"]) == 0
    sizes = {p.relative_to(dst).as_posix(): Image.open(p).size for p in dst.rglob("*.*") if p.suffix != ".json"}
    assert sizes == {"train/a/0.jpg": (64, 48), "train/a/1.jpg": (48, 64), "train/b/2.jpg": (64, 48),
                     "train/b/3.png": (20, 20), "val/a/4.jpg": (64, 48)}
    assert (dst / "train/b/3.png").read_bytes() == (src / "train/b/3.png").read_bytes()  # copied as is
    manifest = json.loads((dst / "prepare.json").read_text())
    assert manifest["max_side"] == 64 and manifest["quality"] == 85 and manifest["images"] == 5
    assert data_copy(DataConfig(name="imagefolder", root=str(dst))) == manifest  # what a run records
    assert data_copy(DataConfig(name="imagefolder", root=str(src))) is None

    (dst / "train/a/0.jpg").unlink()  # a copy stopped midway: one file missing, one half-written
    (dst / "train/a/.tmp_99_1.jpg").write_bytes(b"half")
    (dst / "prepare.json").unlink()
    capsys.readouterr()
    assert main(["prepare", str(src), str(dst), "--max-side", "64", "--quality", "85"]) == 0
    assert "1 written, 4 already there" in capsys.readouterr().out
    assert Image.open(dst / "train/a/0.jpg").size == (64, 48) and not list(dst.rglob(".tmp_*"))


@pytest.mark.parametrize("args, words", [
    (["--max-side", "32"], "holds a copy made with"),  # the copy exists with 64
    (["--max-side", "8"], "--max-side 8 must be >= 16"),
    (["--max-side", "64", "--quality", "0"], "--quality 0 must be in 1..100"),
])
def test_prepare_refuses_in_one_line(src, tmp_path, capsys, args, words):
    dst = tmp_path / "dst"
    assert main(["prepare", str(src), str(dst), "--max-side", "64"]) == 0
    capsys.readouterr()
    assert main(["prepare", str(src), str(dst), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err


def test_prepare_refuses_a_destination_inside_the_source_or_a_source_without_train(src, tmp_path, capsys):
    assert main(["prepare", str(src), str(src / "copy"), "--max-side", "64"]) == 2
    assert "lies inside SRC" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "nowhere"), str(tmp_path / "d"), "--max-side", "64"]) == 2
    assert "train not found" in capsys.readouterr().err and not (tmp_path / "d").exists()


def one_line(status: int, capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def test_prepare_refuses_empty_splits_and_a_file_as_dst_before_writing(src, tmp_path, capsys):
    """Both were tracebacks (FileNotFoundError, NotADirectoryError)."""
    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "val" / "a").mkdir(parents=True)
    err = one_line(main(["prepare", str(empty), str(tmp_path / "d"), "--max-side", "64"]), capsys)
    assert f"{empty / 'train'} holds no images" in err and not (tmp_path / "d").exists()
    (tmp_path / "file").write_text("x")
    err = one_line(main(["prepare", str(src), str(tmp_path / "file"), "--max-side", "64"]), capsys)
    assert "is a file" in err and (tmp_path / "file").read_text() == "x"


def test_a_damaged_small_image_stops_prepare_not_a_run(src, tmp_path, capsys):
    """A PNG under --max-side is copied byte for byte, but only once it decodes whole."""
    small = (src / "train/b/3.png").read_bytes()
    (src / "train/b/3.png").write_bytes(small[:len(small) // 2])  # the header is whole, the pixels are not
    err = one_line(main(["prepare", str(src), str(tmp_path / "dst"), "--max-side", "64"]), capsys)
    assert "1 file(s) could not be read" in err and "3.png" in err
    assert not (tmp_path / "dst/train/b/3.png").exists()


def test_an_unfinished_copy_is_refused_by_train_and_a_rerun_keeps_the_totals(src, tmp_path, capsys):
    """A copy that prepare left unfinished is marked so, and train says to finish it; a rerun of a
    finished copy records the same totals (it wrote `written: 0`)."""
    from distill.data.sources import load_split
    from distill.errors import DataError
    dst = tmp_path / "dst"
    (src / "train/b/3.png").write_bytes(b"\x89PNG broken")
    assert main(["prepare", str(src), str(dst), "--max-side", "64"]) == 2  # stopped: the copy is not whole
    capsys.readouterr()
    with pytest.raises(DataError, match=f"{dst} is a copy that distill prepare has not finished; finish it with "
                                        f"distill prepare {src.resolve()} {dst} --max-side 64 --quality 90"):
        load_split(DataConfig(name="imagefolder", root=str(dst)), train=True)
    (src / "train/b/3.png").unlink()
    assert main(["prepare", str(src), str(dst), "--max-side", "64"]) == 0
    first = json.loads((dst / "prepare.json").read_text())
    assert first["complete"] and (first["images"], first["resized"], first["copied"]) == (4, 4, 0)
    assert len(load_split(DataConfig(name="imagefolder", root=str(dst)), train=True)) == 3
    assert main(["prepare", str(src), str(dst), "--max-side", "64"]) == 0
    assert "0 written, 4 already there" in capsys.readouterr().out
    assert json.loads((dst / "prepare.json").read_text()) == first
