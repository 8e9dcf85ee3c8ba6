"""The synthetic MHIST-layout generator: layout, vocabulary, ratios, determinism, content."""

from __future__ import annotations

import csv
import filecmp
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import sample_data
from training.sample_data import HEADER, README_FIRST_LINE, generate, plan_rows

REPO_ROOT = Path(__file__).resolve().parents[1]


def read_rows(folder: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(folder / "annotations.csv", newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [dict(zip(header, row, strict=True)) for row in reader]
    return header, rows


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    generate(out, count=120, size=224, seed=3)
    return out


def test_layout_header_and_markers(sample: Path) -> None:
    header, rows = read_rows(sample)
    assert header == [
        "Image Name",
        "Majority Vote Label",
        "Number of Annotators who Selected SSA (Out of 7)",
        "Partition",
    ]
    assert tuple(header) == HEADER
    assert len(rows) == 120
    assert (sample / "README.txt").read_text().startswith(README_FIRST_LINE)
    assert "SYNTHETIC" in README_FIRST_LINE
    marker = json.loads((sample / "synthetic.json").read_text())
    assert marker["synthetic"] is True
    assert (marker["count"], marker["size"], marker["seed"]) == (120, 224, 3)


def test_names_and_files_match(sample: Path) -> None:
    _, rows = read_rows(sample)
    names = [r["Image Name"] for r in rows]
    assert all(re.fullmatch(r"MHIST_[a-z]{3}\.png", n) for n in names)
    assert len(set(names)) == len(names)
    assert sorted(p.name for p in (sample / "images").iterdir()) == sorted(names)


def test_labels_votes_partitions_consistent(sample: Path) -> None:
    _, rows = read_rows(sample)
    for row in rows:
        votes = int(row["Number of Annotators who Selected SSA (Out of 7)"])
        assert 0 <= votes <= 7
        assert row["Majority Vote Label"] == ("SSA" if votes >= 4 else "HP")
        assert row["Partition"] in ("train", "test")
    # Both classes in both partitions, and borderline votes (3 and 4) exist at this size.
    seen = {(r["Partition"], r["Majority Vote Label"]) for r in rows}
    assert seen == {("train", "HP"), ("train", "SSA"), ("test", "HP"), ("test", "SSA")}


def test_full_size_plan_reproduces_mhist_counts() -> None:
    rows = plan_rows(3152, seed=0)
    counts = sample_data.counts_of(rows)
    assert counts == {"train": {"HP": 1545, "SSA": 630}, "test": {"HP": 617, "SSA": 360}}
    votes = np.array([r.votes for r in rows])
    assert set(np.unique(votes)) == set(range(8))


def test_small_samples_keep_the_imbalance(sample: Path) -> None:
    counts = json.loads((sample / "synthetic.json").read_text())["counts"]
    train, test = counts["train"], counts["test"]
    assert train["HP"] + train["SSA"] == round(120 * 2175 / 3152)
    assert train["SSA"] / (train["HP"] + train["SSA"]) == pytest.approx(630 / 2175, abs=0.02)
    assert test["SSA"] / (test["HP"] + test["SSA"]) == pytest.approx(360 / 977, abs=0.03)


def test_images_are_rgb_at_the_requested_size(sample: Path, tmp_path: Path) -> None:
    for path in sorted((sample / "images").iterdir())[:20]:
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "RGB", (224, 224))
    generate(tmp_path, count=8, size=96, seed=1)
    for path in (tmp_path / "images").iterdir():
        with Image.open(path) as img:
            assert (img.mode, img.size) == ("RGB", (96, 96))


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, count=16, size=64, seed=5)
    generate(b, count=16, size=64, seed=5)
    generate(c, count=16, size=64, seed=6)
    names = sorted(p.name for p in (a / "images").iterdir())
    match, mismatch, errors = filecmp.cmpfiles(a / "images", b / "images", names, shallow=False)
    assert (len(match), mismatch, errors) == (16, [], [])
    assert (a / "annotations.csv").read_bytes() == (b / "annotations.csv").read_bytes()
    same = [n for n in names if (a / "images" / n).read_bytes() == (c / "images" / n).read_bytes()]
    assert same == []


def _lumen_fraction(path: Path) -> float:
    rgb = np.asarray(Image.open(path), dtype=np.int16)
    return float(((rgb > 225).all(axis=2)).mean())  # near-white pixels are crypt lumens


def test_classes_differ_in_structure(sample: Path) -> None:
    """SSA crypts are dilated: a larger share of each patch is lumen than in HP."""
    _, rows = read_rows(sample)
    fractions = {"HP": [], "SSA": []}
    for row in rows:
        fractions[row["Majority Vote Label"]].append(
            _lumen_fraction(sample / "images" / row["Image Name"])
        )
    hp, ssa = np.array(fractions["HP"]), np.array(fractions["SSA"])
    assert ssa.mean() > 2 * hp.mean()
    assert hp.min() > 0.0  # HP crypts have lumens too, only small ones


def test_cli_says_it_is_synthetic(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "training.sample_data", "--out", str(out), "--count", "12",
         "--size", "64", "--seed", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    assert "SYNTHETIC" in result.stdout
    assert "12 images" in result.stdout
    assert len(list((out / "images").iterdir())) == 12


def test_rewriting_a_sample_replaces_it(tmp_path: Path) -> None:
    generate(tmp_path, count=20, size=64, seed=0)
    generate(tmp_path, count=10, size=64, seed=0)
    _, rows = read_rows(tmp_path)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(
        r["Image Name"] for r in rows
    )


def test_refuses_to_write_into_a_real_dataset(tmp_path: Path) -> None:
    (tmp_path / "annotations.csv").write_text(",".join(HEADER) + "\n")
    with pytest.raises(SystemExit, match="not a synthetic sample"):
        generate(tmp_path, count=10, size=64)


@pytest.mark.parametrize(("count", "size"), [(3, 64), (10, 16)])
def test_rejects_unusable_arguments(tmp_path: Path, count: int, size: int) -> None:
    with pytest.raises(ValueError, match=r"--count|--size"):
        generate(tmp_path, count=count, size=size)
