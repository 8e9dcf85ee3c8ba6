"""The MHIST loader: every bad folder gets an error a person can act on; counts; the split."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from services.core.preprocessing import PreprocessSpec, preprocess
from training.data import (
    Augment,
    DatasetError,
    MHISTDataset,
    class_counts,
    format_counts,
    is_synthetic,
    load_annotations,
    split_sha256,
    split_train_val,
)
from training.sample_data import HEADER, generate

GOOD_HEADER = ",".join(HEADER)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pristine")
    generate(out, count=60, size=64, seed=11)
    return out


@pytest.fixture
def folder(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the sample that a test may break."""
    return Path(shutil.copytree(pristine, tmp_path / "mhist"))


def rewrite_csv(folder: Path, edit) -> None:
    path = folder / "annotations.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def set_field(lines: list[str], row: int, column: int, value: str) -> list[str]:
    cells = lines[row].split(",")
    cells[column] = value
    lines[row] = ",".join(cells)
    return lines


def test_good_folder_loads_with_counts(pristine: Path) -> None:
    records = load_annotations(pristine)
    assert len(records) == 60
    assert records[0].name == "MHIST_aaa.png"
    assert records[0].path == pristine / "images" / "MHIST_aaa.png"
    counts = class_counts(records)
    assert counts == json.loads((pristine / "synthetic.json").read_text())["counts"]
    text = format_counts(counts)
    assert f"train: {counts['train']['HP']} HP, {counts['train']['SSA']} SSA" in text
    assert is_synthetic(pristine)


def test_dataset_error_is_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as err:
        load_annotations(tmp_path / "nowhere")
    assert "--data-dir" in str(err.value) and "training.sample_data" in str(err.value)


def test_folder_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        load_annotations(tmp_path / "file")


def test_missing_annotations(folder: Path) -> None:
    (folder / "annotations.csv").unlink()
    with pytest.raises(DatasetError, match=r"has no annotations\.csv"):
        load_annotations(folder)


def test_missing_images_folder(folder: Path) -> None:
    shutil.rmtree(folder / "images")
    with pytest.raises(DatasetError, match=r"has no images/ folder.*unzip images\.zip"):
        load_annotations(folder)


def test_empty_csv(folder: Path) -> None:
    (folder / "annotations.csv").write_text("")
    with pytest.raises(DatasetError, match="is empty; expected MHIST's header"):
        load_annotations(folder)


def test_header_without_rows(folder: Path) -> None:
    (folder / "annotations.csv").write_text(GOOD_HEADER + "\n")
    with pytest.raises(DatasetError, match="has a header but no rows"):
        load_annotations(folder)


def test_missing_column_names_it(folder: Path) -> None:
    rewrite_csv(folder, lambda lines: [lines[0].replace(",Partition", ",Split"), *lines[1:]])
    with pytest.raises(DatasetError) as err:
        load_annotations(folder)
    message = str(err.value)
    assert message.startswith(
        "annotations.csv has no column 'Partition' — is this the MHIST annotations file?"
    )
    assert "found: Image Name, Majority Vote Label" in message and "Split" in message


def test_wrong_file_entirely(folder: Path) -> None:
    (folder / "annotations.csv").write_text("id,x,y\n1,2,3\n")
    with pytest.raises(DatasetError, match="has no column 'Image Name'"):
        load_annotations(folder)


def test_unknown_labels_are_listed_with_line_numbers(folder: Path) -> None:
    rewrite_csv(folder, lambda lines: set_field(set_field(lines, 3, 1, "TA"), 7, 1, "ssa"))
    with pytest.raises(DatasetError) as err:
        load_annotations(folder)
    message = str(err.value)
    assert "2 unknown 'Majority Vote Label' values (expected HP or SSA)" in message
    assert "line 4: 'TA'" in message and "line 8: 'ssa'" in message


def test_unknown_partition(folder: Path) -> None:
    rewrite_csv(folder, lambda lines: set_field(lines, 2, 3, "validation"))
    with pytest.raises(DatasetError, match=r"unknown 'Partition' values \(expected train or test\)"
                       r": line 3: 'validation'"):
        load_annotations(folder)


def test_bad_vote_counts(folder: Path) -> None:
    rewrite_csv(folder, lambda lines: set_field(set_field(lines, 1, 2, "eight"), 2, 2, "9"))
    with pytest.raises(DatasetError, match="2 'Number of Annotators who Selected SSA' values that "
                       "are not integers 0-7: line 2: 'eight', line 3: '9'"):
        load_annotations(folder)


def test_duplicate_names(folder: Path) -> None:
    rewrite_csv(folder, lambda lines: [*lines, lines[1]])
    with pytest.raises(DatasetError, match=r"image names listed more than once: MHIST_aaa\.png"):
        load_annotations(folder)


def test_several_problems_reported_together(folder: Path) -> None:
    rewrite_csv(folder, lambda lines: set_field(set_field(lines, 1, 1, "X"), 2, 3, "dev"))
    with pytest.raises(DatasetError) as err:
        load_annotations(folder)
    assert "Majority Vote Label" in str(err.value) and "'Partition'" in str(err.value)


def test_label_contradicting_votes_warns_only(folder: Path) -> None:
    records = load_annotations(folder)
    row = next(i for i, r in enumerate(records, start=1) if r.label == "HP")
    rewrite_csv(folder, lambda lines: set_field(lines, row, 2, "6"))
    with pytest.warns(UserWarning, match="1 labels disagree with the vote count"):
        assert len(load_annotations(folder)) == 60


def test_listed_but_absent_images_name_the_first_few(folder: Path) -> None:
    records = load_annotations(folder)
    for record in records[:7]:
        record.path.unlink()
    with pytest.raises(DatasetError) as err:
        load_annotations(folder)
    message = str(err.value)
    assert message.startswith("7 images listed in annotations.csv are missing from")
    assert ", ".join(r.name for r in records[:5]) in message
    assert "… and 2 more" in message and records[6].name not in message


def test_unreadable_images(folder: Path) -> None:
    records = load_annotations(folder)
    records[0].path.write_bytes(b"this is not a PNG")
    data = records[1].path.read_bytes()
    records[1].path.write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(DatasetError) as err:
        load_annotations(folder)
    message = str(err.value)
    assert message.startswith("2 images in")
    assert "cannot be read as images" in message
    assert records[0].name in message and records[1].name in message


def test_excel_byte_order_mark_is_accepted(folder: Path) -> None:
    path = folder / "annotations.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(load_annotations(folder)) == 60


def test_a_partition_without_rows(folder: Path) -> None:
    rewrite_csv(folder, lambda lines: [lines[0]] + [x for x in lines[1:] if x.endswith(",train")])
    with pytest.raises(DatasetError, match="no row with Partition 'test'"):
        load_annotations(folder)


def test_real_layout_without_marker_is_not_synthetic(folder: Path) -> None:
    (folder / "synthetic.json").unlink()
    (folder / "README.txt").unlink()
    assert not is_synthetic(folder)
    assert len(load_annotations(folder)) == 60


# ---------------------------------------------------------------- split


def test_split_is_stratified_seeded_and_train_only(pristine: Path) -> None:
    records = load_annotations(pristine)
    fit, val = split_train_val(records, val_fraction=0.25, seed=0)
    train = [r for r in records if r.partition == "train"]
    assert sorted(r.name for r in fit + val) == sorted(r.name for r in train)
    assert not {r.name for r in fit} & {r.name for r in val}
    assert all(r.partition == "train" for r in fit + val)
    share = Counter(r.label for r in train)["SSA"] / len(train)
    assert Counter(r.label for r in val)["SSA"] / len(val) == pytest.approx(share, abs=0.1)
    assert len(val) == pytest.approx(0.25 * len(train), abs=1)
    again = split_train_val(list(reversed(records)), val_fraction=0.25, seed=0)
    assert [r.name for r in again[1]] == [r.name for r in val]  # CSV order does not matter
    other = split_train_val(records, val_fraction=0.25, seed=1)
    assert {r.name for r in other[1]} != {r.name for r in val}


def test_split_fingerprint_names_the_images_not_their_order(pristine: Path) -> None:
    records = load_annotations(pristine)
    _, val = split_train_val(records, val_fraction=0.25, seed=0)
    _, other = split_train_val(records, val_fraction=0.25, seed=1)
    assert split_sha256(val) == split_sha256(list(reversed(val)))
    assert split_sha256(val) != split_sha256(other)
    assert len(split_sha256(val)) == 64


def test_split_rejects_bad_fraction(pristine: Path) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(load_annotations(pristine), val_fraction=1.5)


# ---------------------------------------------------------------- dataset


def test_dataset_uses_the_serving_preprocessing(pristine: Path) -> None:
    records = load_annotations(pristine)[:4]
    spec = PreprocessSpec(size=48, resize_size=48)
    dataset = MHISTDataset(records, spec)
    for index, record in enumerate(records):
        tensor, target = dataset[index]
        assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (3, 48, 48)
        assert target == (1 if record.label == "SSA" else 0)
        with Image.open(record.path) as img:
            expected = preprocess(img, spec)
        np.testing.assert_array_equal(tensor.numpy(), expected)


def test_an_image_serving_would_refuse_is_a_dataset_error(folder: Path) -> None:
    records = load_annotations(folder)[:1]
    Image.new("RGB", (8, 8), (200, 120, 160)).save(records[0].path)  # under the 16 px minimum
    for augment in (None, Augment()):
        with pytest.raises(DatasetError, match=r"8x8 pixels.*Serving would refuse it too"):
            MHISTDataset(records, PreprocessSpec(size=48, resize_size=48), augment)[0]

def test_augmentation_is_seeded_and_changes_pixels(pristine: Path) -> None:
    records = load_annotations(pristine)[:6]
    spec = PreprocessSpec(size=64, resize_size=64)
    plain = MHISTDataset(records, spec)
    augmented = MHISTDataset(records, spec, augment=Augment())

    def draw() -> list[np.ndarray]:
        torch.manual_seed(123)
        return [augmented[i][0].numpy() for i in range(len(records))]

    first, second = draw(), draw()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, plain[i][0].numpy()) for i, a in enumerate(first)]
    assert sum(changed) >= 4
    assert all(a.shape == (3, 64, 64) for a in first)
