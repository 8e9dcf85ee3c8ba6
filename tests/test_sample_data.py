"""The synthetic MHIST-layout generator: layout, vocabulary, ratios, determinism, content."""

from __future__ import annotations

import csv
import dataclasses
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
    return float(((rgb > 215).all(axis=2)).mean())  # near-white pixels are crypt lumens


def test_structure_follows_the_votes(sample: Path) -> None:
    """SSA crypts are dilated: the lumen share rises with the SSA votes, not with the label."""
    _, rows = read_rows(sample)
    votes = np.array([int(r["Number of Annotators who Selected SSA (Out of 7)"]) for r in rows])
    fractions = np.array([_lumen_fraction(sample / "images" / r["Image Name"]) for r in rows])
    assert np.corrcoef(votes, fractions)[0, 1] > 0.5
    assert fractions[votes == 7].mean() > 2 * fractions[votes == 0].mean()
    assert fractions.min() > 0.0  # HP crypts have lumens too, only small ones


def test_every_image_is_its_own_picture(sample: Path) -> None:
    """Version 1 seeded every image alike, so one vote count meant one picture."""
    digests = {(sample / "images" / p.name).read_bytes() for p in (sample / "images").iterdir()}
    assert len(digests) == 120


def _auc(low: np.ndarray, high: np.ndarray) -> float:
    """P(a draw from `high` exceeds one from `low`): the AUC of a perfect evidence reader."""
    return float((high[:, None] > low[None, :]).mean())


def test_evidence_is_clear_at_unanimity_and_ambiguous_at_three_against_four() -> None:
    rng = np.random.default_rng(0)
    draws = {v: np.array([sample_data.evidence(v, rng) for _ in range(2000)]) for v in range(8)}
    assert np.median(draws[0]) < 0.1 and np.median(draws[7]) > 0.9
    assert _auc(draws[0], draws[7]) > 0.98
    # Even a perfect reader of the image tells 3/7 from 4/7 only a little better than chance.
    assert 0.5 < _auc(draws[3], draws[4]) < 0.7
    medians = [np.median(draws[v]) for v in range(8)]
    assert medians == sorted(medians)  # evidence grows with every extra SSA vote


def test_many_votes_are_split_as_in_mhist() -> None:
    votes = np.array([r.votes for r in plan_rows(3152, seed=0)])
    share = {k: float(np.isin(votes, pair).mean())
             for k, pair in (("very easy", (0, 7)), ("easy", (1, 6)), ("hard", (2, 5)),
                             ("very hard", (3, 4)))}
    assert 0.14 <= share["very hard"] <= 0.22  # MHIST: 16.7 % of images were 3 against 4
    assert 0.30 <= share["hard"] + share["very hard"] <= 0.45
    assert share["very easy"] < 0.5


def test_slides_group_images_within_a_partition() -> None:
    rows = plan_rows(400, seed=0)
    slides: dict[int, list] = {}
    for row in rows:
        slides.setdefault(row.slide, []).append(row)
    assert 30 <= len(slides) <= 60  # about 8 images a slide
    assert all(len({r.partition for r in members}) == 1 for members in slides.values())
    # Slides are drawn regardless of the label: most slides with 8+ images hold both classes.
    big = [members for members in slides.values() if len(members) >= 8]
    assert sum(len({r.label for r in members}) == 2 for members in big) > 0.7 * len(big)


def test_slides_vary_stain_scale_focus_and_grain() -> None:
    """Each simulated slide draws its own nuisance, the same every time it is asked for."""
    slides = [sample_data.slide_of(s, 0) for s in range(50)]
    again = sample_data.slide_of(7, 0)
    assert (again.colours, again.crypt_scale, again.blur) == (
        slides[7].colours, slides[7].crypt_scale, slides[7].blur)
    nuclei = np.array([s.colours["nuclei"] for s in slides], dtype=np.float64)
    assert nuclei.std(axis=0).min() > 3.0  # grey levels: haematoxylin shades differ by slide
    assert np.array([s.eosin for s in slides]).std(axis=0).max() > 3.0
    assert np.std([s.crypt_scale for s in slides]) > 0.05  # ±5 % crypt size mimics dilation
    assert np.std([s.lumen_open for s in slides]) > 0.03
    assert np.ptp([s.blur for s in slides]) > 0.5 and np.ptp([s.grain for s in slides]) > 2.0
    # The same image content (one name: one generator) on two slides: only the nuisance differs.
    row = sample_data.Row("MHIST_aaa.png", "HP", 0, "train", 1)
    a, b = (np.asarray(sample_data.render(r, 96, 0), dtype=np.float64)
            for r in (row, dataclasses.replace(row, slide=2)))
    assert np.abs(a - b).mean() > 5.0


def test_rendering_does_not_depend_on_order(tmp_path: Path) -> None:
    """Each image and slide has its own generator: no state leaks between images or threads."""
    rows = plan_rows(12, seed=4)
    forward = [sample_data.render(r, 48, 4).tobytes() for r in rows]
    backward = [sample_data.render(r, 48, 4).tobytes() for r in reversed(rows)]
    assert forward == backward[::-1]
    generate(tmp_path, count=12, size=48, seed=4)
    for row, data in zip(rows, forward, strict=True):
        with Image.open(tmp_path / "images" / row.name) as img:
            assert img.tobytes() == data


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
