"""Which images each export step reads: the training run's own split, re-derived from its card.

The gates (parity, INT8 accuracy) read the validation split that training held out of the
`train` partition, reproduced from the seed and val_fraction stored with the model and checked
against the fingerprint stored beside them. INT8 calibration reads the rest of the `train`
partition, so the gate never judges INT8 on the images it was calibrated on. The official `test`
partition is read once, after every gate has passed, for reported metrics that decide nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from training.data import DatasetError, Record, split_sha256, split_train_val

GATE_SPLIT = "validation"
CALIBRATION_SPLIT = "fit"  # the train partition minus validation: what training fit on
REPORT_SPLIT = "test"


@dataclass(frozen=True)
class ExportSplits:
    calibration: list[Record]  # sorted by name
    validation: list[Record]  # sorted by name
    test: list[Record]  # sorted by name
    seed: int
    val_fraction: float
    val_sha256: str
    verified: bool  # the model stored a fingerprint and it matched

    def to_dict(self) -> dict:
        """What the export report says about where each step's images came from."""
        return {
            GATE_SPLIT: {
                "partition": "train",
                "images": len(self.validation),
                "seed": self.seed,
                "val_fraction": self.val_fraction,
                "sha256": self.val_sha256,
                "matches_training": self.verified,
                "used_by": ["parity gate", "skill gate", "INT8 accuracy gate"],
            },
            CALIBRATION_SPLIT: {
                "partition": "train",
                "images": len(self.calibration),
                "definition": "the train partition minus the validation split",
                "used_by": ["INT8 calibration (a seeded sample)"],
            },
            REPORT_SPLIT: {
                "partition": "test",
                "images": len(self.test),
                "used_by": ["final evaluation, reported only, read after the gates passed"],
            },
        }


def training_splits(records: Sequence[Record], card: dict) -> ExportSplits:
    """The training run's fit/validation split of `records`, and the test partition.

    Raises DatasetError when the card lacks what reproduces the split, or when the reproduced
    validation split is not the one training used (another data folder, another annotations.csv).
    """
    config = card.get("config") or {}
    if "seed" not in config or "val_fraction" not in config:
        raise DatasetError(
            "the model card has no config.seed / config.val_fraction, so the validation split "
            "training used cannot be reproduced for the export gates; retrain with the current "
            "training/train.py"
        )
    seed, val_fraction = int(config["seed"]), float(config["val_fraction"])
    fit, val = split_train_val(records, val_fraction, seed)
    digest = split_sha256(val)
    expected = (config.get("extra") or {}).get("val_split_sha256")
    if expected is None:
        warnings.warn(
            f"the model card stores no val_split_sha256 (trained before training recorded it): "
            f"the gates use the split re-derived from seed {seed} and val_fraction "
            f"{val_fraction} unverified; the report says matches_training: false",
            stacklevel=2,
        )
    elif expected != digest:
        raise DatasetError(
            f"the validation split re-derived from seed {seed} and val_fraction {val_fraction} "
            f"({len(val)} images, sha256 {digest[:12]}…) is not the one training held out "
            f"(sha256 {expected[:12]}…): --data-dir must be the folder the model was trained on, "
            "with the same annotations.csv"
        )

    def by_name(items: Sequence[Record]) -> list[Record]:
        return sorted(items, key=lambda r: r.name)

    test = [r for r in records if r.partition == "test"]
    return ExportSplits(
        by_name(fit), by_name(val), by_name(test), seed, val_fraction, digest, expected is not None
    )
