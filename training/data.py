"""MHIST folder → validated records → torch Datasets that use THE serving preprocessing.

Layout (the official download, or `python -m training.sample_data`):
    DIR/annotations.csv   Image Name, Majority Vote Label, Number of Annotators who Selected SSA
                          (Out of 7), Partition
    DIR/images/MHIST_xxx.png
The official test partition is used only for final evaluation; model selection uses a stratified,
seeded validation split of the train partition (`split_train_val`).
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from services.core.errors import ServiceError
from services.core.files import sha256_file
from services.core.preprocessing import (
    PreprocessSpec,
    decode_image,
    preprocess,
    preprocess_bytes,
    to_rgb,
)
from training import CLASSES
from training.sample_data import MARKER_FILE, README_FIRST_LINE

COL_NAME = "Image Name"
COL_LABEL = "Majority Vote Label"
COL_VOTES = "Number of Annotators who Selected SSA (Out of 7)"
COL_PARTITION = "Partition"
REQUIRED_COLUMNS = (COL_NAME, COL_LABEL, COL_VOTES, COL_PARTITION)
PARTITIONS = ("train", "test")
ANNOTATORS = 7
SHOW = 5  # offenders named in one message: enough to spot the pattern, short enough to read


class DatasetError(ValueError):
    """The data folder is not a usable MHIST folder; the message says what to fix."""


@dataclass(frozen=True)
class Record:
    name: str  # file name as in annotations.csv, e.g. MHIST_aaa.png
    path: Path  # DIR/images/<name>
    label: str  # "HP" | "SSA"
    partition: str  # "train" | "test"
    votes: int  # annotators (of 7) who chose SSA

    @property
    def target(self) -> int:
        """Index of the label in logit order (HP=0, SSA=1)."""
        return CLASSES.index(self.label)


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SHOW])
    return shown + (f" … and {len(items) - SHOW} more" if len(items) > SHOW else "")


def _check_folder(data_dir: Path) -> tuple[Path, Path]:
    hint = (
        "pass --data-dir pointing at the MHIST folder (the one holding annotations.csv and "
        "images/), or make a synthetic one with `python -m training.sample_data --out DIR`"
    )
    if not data_dir.exists():
        raise DatasetError(f"data folder {data_dir} does not exist; {hint}")
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir} is a file, not a folder; {hint}")
    csv_path, images = data_dir / "annotations.csv", data_dir / "images"
    if not csv_path.is_file():
        raise DatasetError(f"{data_dir} has no annotations.csv; {hint}")
    if not images.is_dir():
        raise DatasetError(
            f"{data_dir} has no images/ folder; MHIST's images must sit in {images} "
            "(unzip images.zip there)"
        )
    return csv_path, images


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    # utf-8-sig: a CSV saved by Excel starts with a byte-order mark that would rename column 1.
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()}
                    for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{csv_path} is not a readable CSV file: {exc}") from None
    if not columns:
        raise DatasetError(
            f"{csv_path} is empty; expected MHIST's header {', '.join(REQUIRED_COLUMNS)}"
        )
    for column in REQUIRED_COLUMNS:
        if column not in columns:
            raise DatasetError(
                f"annotations.csv has no column {column!r} — is this the MHIST annotations file? "
                f"Expected columns: {', '.join(REQUIRED_COLUMNS)}; found: {', '.join(columns)}"
            )
    if not rows:
        raise DatasetError(f"{csv_path} has a header but no rows")
    return rows


def _parse_rows(rows: list[dict[str, str]], images: Path) -> list[Record]:
    """Rows → records; every problem of one kind is reported at once (first few named)."""
    problems: dict[str, list[str]] = {}

    def problem(kind: str, text: str) -> None:
        problems.setdefault(kind, []).append(text)

    records, seen = [], set()
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        name, label, partition = row[COL_NAME], row[COL_LABEL], row[COL_PARTITION]
        if not name:
            problem("name", f"line {line}")
        elif name in seen:
            problem("duplicate", name)
        seen.add(name)
        if label not in CLASSES:
            problem("label", f"line {line}: {label!r}")
        if partition not in PARTITIONS:
            problem("partition", f"line {line}: {partition!r}")
        try:
            votes = int(row[COL_VOTES])
            if not 0 <= votes <= ANNOTATORS:
                raise ValueError
        except ValueError:
            problem("votes", f"line {line}: {row[COL_VOTES]!r}")
            votes = -1
        if votes >= 0 and label in CLASSES and (votes >= 4) != (label == "SSA"):
            problem("inconsistent", f"line {line}: {label} with {votes}/7 votes for SSA")
        records.append(Record(name, images / name, label, partition, votes))
    _raise_for(problems)
    return records


_PROBLEM_TEXT = {
    "name": "rows with an empty 'Image Name'",
    "duplicate": "image names listed more than once",
    "label": f"unknown 'Majority Vote Label' values (expected {' or '.join(CLASSES)})",
    "partition": f"unknown 'Partition' values (expected {' or '.join(PARTITIONS)})",
    "votes": f"'Number of Annotators who Selected SSA' values that are not integers 0-{ANNOTATORS}",
}


def _raise_for(problems: dict[str, list[str]]) -> None:
    inconsistent = problems.pop("inconsistent", [])
    if inconsistent:
        # A majority vote of 7 makes SSA iff ≥ 4 votes; a mismatch is suspicious, not fatal:
        # the label column is what the model learns.
        warnings.warn(
            f"annotations.csv: {len(inconsistent)} labels disagree with the vote count "
            f"(SSA iff ≥ 4 of 7): {_listing(inconsistent)}",
            stacklevel=3,
        )
    if problems:
        lines = [f"{len(items)} {_PROBLEM_TEXT[kind]}: {_listing(items)}"
                 for kind, items in problems.items()]
        raise DatasetError(
            "annotations.csv is not valid MHIST annotations:\n  " + "\n  ".join(lines)
        )


def _check_images(records: Iterable[Record], images: Path, verify: bool) -> None:
    missing, unreadable = [], []
    for record in records:
        if not record.path.is_file():
            missing.append(record.name)
        elif verify:
            try:
                with Image.open(record.path) as img:
                    img.verify()  # reads every chunk and checks CRCs, without decoding pixels
            except (OSError, SyntaxError, UnidentifiedImageError, ValueError) as exc:
                unreadable.append(f"{record.name} ({exc})")
    if missing:
        raise DatasetError(
            f"{len(missing)} images listed in annotations.csv are missing from {images}: "
            f"{_listing(missing)} — is the images/ folder complete (unzip images.zip there)?"
        )
    if unreadable:
        raise DatasetError(
            f"{len(unreadable)} images in {images} cannot be read as images: "
            f"{_listing(unreadable)} — re-download or remove them from annotations.csv"
        )


def load_annotations(data_dir: str | Path, verify_images: bool = True) -> list[Record]:
    """Validated records of an MHIST folder, in the CSV's order; DatasetError says what to fix."""
    data_dir = Path(data_dir)
    csv_path, images = _check_folder(data_dir)
    records = _parse_rows(_read_rows(csv_path), images)
    _check_images(records, images, verify_images)
    for partition in PARTITIONS:
        if not any(r.partition == partition for r in records):
            raise DatasetError(f"annotations.csv has no row with Partition {partition!r}")
    return records


def class_counts(records: Iterable[Record]) -> dict[str, dict[str, int]]:
    """{partition: {"HP": n, "SSA": n}}, every class present even when its count is 0."""
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        counts.setdefault(r.partition, dict.fromkeys(CLASSES, 0))[r.label] += 1
    return counts


def format_counts(counts: dict[str, dict[str, int]]) -> str:
    return "; ".join(
        f"{part}: " + ", ".join(f"{n} {label}" for label, n in per.items())
        for part, per in counts.items()
    )


def split_train_val(
    records: Sequence[Record], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """Stratified, seeded split of the TRAIN partition; the test partition is never touched."""
    from sklearn.model_selection import train_test_split  # heavy import, only when splitting

    train = sorted((r for r in records if r.partition == "train"), key=lambda r: r.name)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    labels = [r.label for r in train]
    smallest = min(labels.count(c) for c in set(labels))
    if len(set(labels)) < 2 or smallest < 2:
        raise DatasetError(
            "the train partition needs at least 2 images of each class for a stratified "
            f"validation split; it has {dict(class_counts(train).get('train', {}))}"
        )
    fit, val = train_test_split(train, test_size=val_fraction, stratify=labels, random_state=seed)
    return list(fit), list(val)


def split_sha256(records: Iterable[Record]) -> str:
    """Fingerprint of a split: sha256 of its sorted image names, one per line.

    Stored with the model (config.extra.val_split_sha256), so export can prove that the
    validation split it re-derives from seed and val_fraction is the one training held out.
    """
    names = "\n".join(sorted(r.name for r in records))
    return hashlib.sha256(names.encode()).hexdigest()


def is_synthetic(data_dir: str | Path) -> bool:
    """True for folders written by training.sample_data (marker file or README first line)."""
    data_dir = Path(data_dir)
    if (data_dir / MARKER_FILE).is_file():
        return True
    readme = data_dir / "README.txt"
    return readme.is_file() and readme.read_text(errors="replace").startswith(README_FIRST_LINE)


def annotations_sha256(data_dir: str | Path) -> str:
    return sha256_file(Path(data_dir) / "annotations.csv")


class Augment:
    """Histology-safe augmentation on a PIL RGB image: tissue has no 'up', stains vary a little.

    Random draws come from torch's generator, which DataLoader seeds per worker, so a seeded
    run sees the same augmentations every time.
    """

    def __init__(self, jitter: float = 0.1, hue: float = 0.02) -> None:
        from torchvision.transforms import ColorJitter

        self.jitter = ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=hue)

    def __call__(self, img: Image.Image) -> Image.Image:
        import torch

        flip, turns = torch.randint(0, 2, ()).item(), torch.randint(0, 4, ()).item()
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # Flip × 0-3 quarter turns covers all 8 symmetries of the square (the dihedral group).
        rotations = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                     Image.Transpose.ROTATE_270)
        if turns:
            img = img.transpose(rotations[turns])
        return self.jitter(img)


class MHISTDataset:
    """torch-style Dataset: (tensor (3, S, S) float32, target int) per record.

    With soft_targets the target is a (2,) float32 tensor of class probabilities from the votes.

    Decoding and preprocessing are the serving code's (services.core.preprocessing): without
    augmentation (validation, test) an item is exactly what serving computes from the file's
    bytes. Augmentation, when given (train split only), runs on the decoded RGB image before
    the serving preprocessing.
    """

    def __init__(
        self,
        records: Sequence[Record],
        spec: PreprocessSpec,
        augment: Augment | None = None,
        soft_targets: bool = False,
    ) -> None:
        self.records = list(records)
        self.spec = spec
        self.augment = augment
        # Soft targets: (P(HP), P(SSA)) = (1 - v/7, v/7) from the annotators' votes, for a
        # cross-entropy with class probabilities; the hard label stays in `targets`.
        self.soft_targets = soft_targets

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):  # -> tuple[torch.Tensor, int]
        import torch

        record = self.records[index]
        data = record.path.read_bytes()
        try:
            if self.augment is None:
                array = preprocess_bytes(data, self.spec)  # (3, S, S) float32, as served
            else:
                # preprocess_bytes with the augmentation between decoding and preprocess
                # (whose own to_rgb is then a no-op on the augmented RGB image).
                rgb = self.augment(to_rgb(decode_image(data)))
                array = preprocess(rgb, self.spec)  # (3, S, S) float32
        except ServiceError as exc:
            # An image serving would refuse with a 4xx; DatasetError survives DataLoader workers.
            raise DatasetError(
                f"{record.path}: {exc.message} Serving would refuse it too: fix or remove it "
                "from annotations.csv"
            ) from None
        if self.soft_targets:
            share = record.votes / ANNOTATORS
            return torch.from_numpy(array), torch.tensor([1.0 - share, share])  # (2,) float32
        return torch.from_numpy(array), record.target

    @property
    def targets(self) -> np.ndarray:
        return np.array([r.target for r in self.records], dtype=np.int64)
