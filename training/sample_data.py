"""Synthetic data in the exact MHIST layout, so every stage runs without the registration-only set.

    python -m training.sample_data --out data/sample [--count N] [--size PX] [--seed S]

writes DIR/annotations.csv (MHIST's header and vocabulary), DIR/images/MHIST_xxx.png and, so
that nobody mistakes it for patient data, DIR/README.txt and DIR/synthetic.json.

The two classes differ in STRUCTURE, loosely after the histology:
- HP (hyperplastic polyp): round, evenly spaced crypts with small, regular, round lumens;
- SSA (sessile serrated adenoma): dilated crypts whose lumens are serrated (saw-tooth), some
  boot-shaped (a lateral foot at the base).

It is meant to be about as hard as MHIST, where 7 pathologists voted on every image and many
votes are split (generator version 2; version 1 had a gap between the classes and any model
reached AUC 1.0 in one epoch):
- Votes: HP has 0-3 SSA votes, SSA 4-7, drawn so that roughly a third of the images are split
  (2-5 of 7) and about one in six is 3/7 or 4/7, as MHIST reports.
- Evidence follows the votes continuously: an image's SSA evidence e (0 = textbook HP,
  1 = textbook SSA) is drawn around the smoothed vote share (votes + 0.5) / 8 with a
  logit-normal spread, as if the 7 votes were noisy readings of what the image shows. 0/7 and
  7/7 images are clear (median e 0.06 / 0.94); 3/7 and 4/7 overlap almost completely. A
  perfect reader of e would reach about AUC 0.89 with these votes, and only about 0.60
  between 3/7 and 4/7 images.
- Heterogeneity inside an image: only some crypts show the pattern (the share grows with e),
  and each crypt's severity scatters around the image's e.
- Nuisance between simulated slides: images are grouped into slides (about 8 images each,
  independent of the label; train and test never share a slide). A slide fixes the stain
  shades, the tissue's crypt size and lumen opening (fixation, cutting angle: they mimic
  dilation), the blur (focus) and the grain, so that no single colour or size cue separates
  the classes.
Everything is drawn with numpy + Pillow from seeded generators (one per image, one per slide):
same seed, same bytes, whatever the thread count.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HEADER = (
    "Image Name",
    "Majority Vote Label",
    "Number of Annotators who Selected SSA (Out of 7)",
    "Partition",
)
MARKER_FILE = "synthetic.json"
README_FIRST_LINE = "SYNTHETIC DATA - NOT MHIST, NOT PATIENT TISSUE"
GENERATOR_VERSION = 2

# MHIST's own proportions: 2175 train / 977 test; train 1545 HP / 630 SSA; test 617 HP / 360 SSA.
TRAIN_SHARE = 2175 / 3152
SSA_SHARE = {"train": 630 / 2175, "test": 360 / 977}
# Annotator votes (out of 7) for SSA; the label is the majority, so HP has 0-3 and SSA 4-7.
# With MHIST's class ratio these give about 37 % unanimous (0|7), 25 % 1|6, 19 % 2|5 and
# 18 % 3|4 (MHIST: 16.7 % of images were 3 against 4).
HP_VOTE_P = (0.40, 0.25, 0.18, 0.17)  # P(votes = 0, 1, 2, 3)
SSA_VOTE_P = (0.22, 0.22, 0.24, 0.32)  # P(votes = 4, 5, 6, 7)
ANNOTATORS = 7
# Pathologists read the evidence noisily, so the evidence behind a vote count is spread out;
# 1.5 logit units puts a perfect reader of the evidence at about AUC 0.89 on MHIST's votes.
EVIDENCE_SPREAD = 1.5
IMAGES_PER_SLIDE = 8
MAX_COUNT = 26**3  # names MHIST_aaa .. MHIST_zzz

# H&E palette (RGB): eosin-pink stroma and cytoplasm, haematoxylin-purple nuclei, pale lumens.
EOSIN = np.array([232.0, 168.0, 204.0])
CYTOPLASM = np.array([196.0, 128.0, 182.0])
HAEMATOXYLIN = np.array([72.0, 42.0, 122.0])
LUMEN = np.array([246.0, 238.0, 246.0])


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    votes: int
    partition: str
    slide: int = 0  # simulated slide: images of one slide share stain, scale, focus and grain


def image_name(index: int) -> str:
    """0 → MHIST_aaa.png, 1 → MHIST_aab.png … (MHIST's own naming: three lowercase letters)."""
    letters = []
    for _ in range(3):
        index, digit = divmod(index, 26)
        letters.append(chr(ord("a") + digit))
    return "MHIST_" + "".join(reversed(letters)) + ".png"


def plan_rows(count: int, seed: int) -> list[Row]:
    """Names, labels, votes, partitions and slides with MHIST's split and class ratios, seeded."""
    rng = np.random.default_rng([seed, 0x5EED])
    n_train = round(count * TRAIN_SHARE)
    slots: list[tuple[str, str]] = []
    for partition, n in (("train", n_train), ("test", count - n_train)):
        n_ssa = min(max(round(n * SSA_SHARE[partition]), 1), n - 1) if n >= 2 else 0
        slots += [(partition, "SSA")] * n_ssa + [(partition, "HP")] * (n - n_ssa)
    order = rng.permutation(len(slots))  # partitions and classes interleave, as in MHIST's CSV
    # Slides never straddle the partitions (test images come from slides training never saw);
    # within a partition an image's slide is drawn regardless of its label.
    n_slides = {"train": max(math.ceil(n_train / IMAGES_PER_SLIDE), 1)}
    n_slides["test"] = max(math.ceil((count - n_train) / IMAGES_PER_SLIDE), 1)
    rows = []
    for index, slot in enumerate(order):
        partition, label = slots[slot]
        if label == "HP":
            votes = int(rng.choice(4, p=HP_VOTE_P))
        else:
            votes = 4 + int(rng.choice(4, p=SSA_VOTE_P))
        slide = int(rng.integers(n_slides[partition]))
        slide += n_slides["train"] if partition == "test" else 0  # ids unique across partitions
        rows.append(Row(image_name(index), label, votes, partition, slide))
    return rows


def evidence(votes: int, rng: np.random.Generator) -> float:
    """0 = textbook HP … 1 = textbook SSA: what the image shows, of which the votes are a reading.

    Logit-normal around the smoothed vote share (votes + 0.5) / 8, spread EVIDENCE_SPREAD in
    logit units: unanimous votes give clear images (0/7: median 0.06), 3/7 and 4/7 overlap
    almost completely, and there is no gap between the classes anywhere.
    """
    share = (votes + 0.5) / (ANNOTATORS + 1)
    logit = math.log(share / (1.0 - share)) + EVIDENCE_SPREAD * rng.standard_normal()
    return 1.0 / (1.0 + math.exp(-logit))


@dataclass(frozen=True)
class Slide:
    """What one simulated slide imposes on all its patches (none of it depends on the label)."""

    colours: dict[str, tuple[int, int, int]]
    eosin: np.ndarray  # stroma tint, RGB
    crypt_scale: float  # tissue shrinkage / cutting level: crypt size, mimics dilation
    lumen_open: float  # added to the lumen/crypt radius ratio: fixation opens lumens too
    blur: float  # out-of-focus box blur radius at 224 px
    grain: float  # sensor/stain noise sigma in grey levels


def slide_of(slide: int, seed: int) -> Slide:
    rng = np.random.default_rng([seed, 0x511DE, slide])
    stain = rng.normal(0.0, 1.0)  # one stain strength moves haematoxylin and eosin together

    def jitter(base: np.ndarray, amount: float, strength: float = 0.0) -> tuple[int, int, int]:
        c = np.clip(base * (1.0 + rng.normal(0.0, amount, 3) - strength), 0, 255)
        return (int(c[0]), int(c[1]), int(c[2]))

    colours = {
        "cytoplasm": jitter(CYTOPLASM, 0.06, 0.04 * stain),
        "nuclei": jitter(HAEMATOXYLIN, 0.10, 0.08 * stain),
        "lumen": jitter(LUMEN, 0.015),
        "stroma_nuclei": jitter(HAEMATOXYLIN * 1.15, 0.10, 0.08 * stain),
    }
    # The stroma's stain in optical density (OD = -ln(I/255)): a slide stains stronger or paler
    # (OD scaled) with a little hue drift (OD per channel), so it stays pink, never grey glass.
    od = -np.log(EOSIN / 255.0) * np.exp(0.08 * stain + rng.normal(0.0, 0.03, 3))
    eosin = 255.0 * np.exp(-od)
    return Slide(
        colours=colours,
        eosin=eosin,
        crypt_scale=float(np.exp(rng.normal(0.0, 0.10))),
        lumen_open=float(rng.normal(0.0, 0.05)),
        blur=float(rng.uniform(0.5, 1.6)),
        grain=float(rng.uniform(3.0, 8.0)),
    )


def _contour(
    centre: np.ndarray, radius: float, aspect: float, angle: float, modulation: np.ndarray
) -> list[tuple[float, float]]:
    """Points of a rotated ellipse whose radius is multiplied by `modulation` (one per point)."""
    t = np.linspace(0.0, 2.0 * math.pi, modulation.size, endpoint=False)
    x = radius * aspect * np.cos(t) * modulation
    y = radius * np.sin(t) * modulation
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    px = centre[0] + cos_a * x - sin_a * y
    py = centre[1] + sin_a * x + cos_a * y
    return list(zip(px.tolist(), py.tolist(), strict=True))


def _boot(t: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    """Radius multiplier with a lateral 'foot' for some SSA crypts (boot/L-shaped base)."""
    if rng.uniform() >= 0.6 * max(s - 0.5, 0.0) * 2.0:
        return np.ones_like(t)
    centre = rng.uniform(0.0, 2.0 * math.pi)
    wrapped = np.angle(np.exp(1j * (t - centre)))  # angular distance in (-pi, pi]
    return 1.0 + 0.55 * np.exp(-(wrapped**2) / (2 * 0.4**2))


def crypt_severity(e: float, rng: np.random.Generator) -> float:
    """One crypt's severity: only some crypts show the pattern, and those scatter around e."""
    if rng.uniform() < 0.55 + 0.45 * e:  # involved: from about half the crypts to all
        return float(np.clip(e + rng.normal(0.0, 0.12), 0.0, 1.0))
    return float(np.clip(0.15 * e + rng.normal(0.0, 0.05), 0.0, 1.0))  # an HP-like crypt


def _draw_crypt(
    draw: ImageDraw.ImageDraw,
    centre: np.ndarray,
    scale: float,
    s: float,
    rng: np.random.Generator,
    slide: Slide,
) -> None:
    colours = slide.colours
    points = 96  # enough vertices for ~14 teeth of a serrated lumen
    t = np.linspace(0.0, 2.0 * math.pi, points, endpoint=False)
    # SSA crypts are dilated; the slide's crypt scale moves every crypt of the slide alike.
    r_out = scale * slide.crypt_scale * (16.0 + 9.0 * s + rng.uniform(-2.0, 2.0))
    aspect = rng.uniform(1.0, 1.25)
    angle = rng.uniform(0.0, math.pi)
    boot = _boot(t, rng, s)
    draw.polygon(_contour(centre, r_out, aspect, angle, boot), fill=colours["cytoplasm"])
    # Basal nuclei: a palisade of haematoxylin dots just inside the crypt's outline.
    n_nuclei = max(int(2 * math.pi * r_out / (3.6 * scale)), 8)
    k = np.linspace(0, points, n_nuclei, endpoint=False).astype(int)
    basal = np.array(_contour(centre, 0.84 * r_out, aspect, angle, boot))[k]
    nucleus = 1.4 * scale
    for x, y in basal + rng.normal(0.0, 0.5 * scale, basal.shape):
        draw.ellipse((x - nucleus, y - nucleus, x + nucleus, y + nucleus), fill=colours["nuclei"])
    # Lumen: small and round in HP; wide with a saw-tooth edge in SSA.
    teeth = int(rng.integers(9, 15))
    phase = rng.uniform()
    saw = ((teeth * t / (2.0 * math.pi)) + phase) % 1.0  # 0 → 1 ramp per tooth
    serration = 1.0 - 0.38 * s * saw
    ratio = float(np.clip(0.28 + 0.36 * s + slide.lumen_open, 0.15, 0.8))
    draw.polygon(_contour(centre, r_out * ratio, aspect, angle, boot * serration),
                 fill=colours["lumen"])


def _stroma(size: int, rng: np.random.Generator, tint: np.ndarray) -> Image.Image:
    """Eosin background with slow colour variation (a coarse random field, upsampled)."""
    coarse = rng.normal(0.0, 1.0, (6, 6)).astype(np.float32)
    field = np.asarray(
        Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    )
    tint = (tint * (1.0 + rng.normal(0.0, 0.015, 3))).astype(np.float32)
    stroma = tint[None, None, :] * (1.0 - 0.06 * field[..., None])  # (S, S, 3)
    return Image.fromarray(np.clip(stroma, 0, 255).astype(np.uint8))


def render(row: Row, size: int, seed: int, textbook: bool = False) -> Image.Image:
    """One RGB patch for one annotation row; depends only on (seed, row, size, textbook).

    textbook=True draws the class's textbook evidence (0 for HP, 1 for SSA) instead of one drawn
    from the votes: an unambiguous field, e.g. to plant in a synthetic slide.
    """
    # Every byte of the name seeds the image (version 1 kept only the low 4 bytes, "MHIS", so
    # all images with the same vote count were the same picture).
    rng = np.random.default_rng([seed, *row.name.encode()])
    e = evidence(row.votes, rng)  # drawn even when unused: textbook keeps the same layout
    if textbook:
        e = 1.0 if row.label == "SSA" else 0.0
    slide = slide_of(row.slide, seed)
    scale = size / 224.0
    img = _stroma(size, rng, slide.eosin)
    draw = ImageDraw.Draw(img)
    # Lymphocytes and plasma cells scattered in the lamina propria, same density in both classes.
    dots = rng.uniform(0, size, (int(140 * scale * scale), 2))
    r = 1.2 * scale
    for x, y in dots:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=slide.colours["stroma_nuclei"])
    # Crypts on a jittered 4×4 grid; a few missing, as in a tangentially cut mucosa.
    step = size / 4.0
    for gy in range(4):
        for gx in range(4):
            if rng.uniform() < 0.1:
                continue
            centre = np.array([(gx + 0.5) * step, (gy + 0.5) * step])
            centre += rng.uniform(-0.15 * step, 0.15 * step, 2)
            _draw_crypt(draw, centre, scale, crypt_severity(e, rng), rng, slide)
    img = img.filter(ImageFilter.BoxBlur(radius=slide.blur * scale))  # optics: focus varies
    noisy = np.asarray(img, dtype=np.float32) + 0.5  # +0.5: astype truncates, so this rounds
    noisy += slide.grain * rng.standard_normal((size, size, 3), dtype=np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), mode="RGB")


def _readme(count: int, size: int, seed: int, counts: dict[str, dict[str, int]]) -> str:
    return (
        f"{README_FIRST_LINE}\n\n"
        "This folder was written by `python -m training.sample_data`. It has the exact layout of\n"
        "MHIST (annotations.csv + images/) but every image is a drawing: HP patches show round\n"
        "crypts with small regular lumens, SSA patches dilated crypts with serrated (saw-tooth)\n"
        "and sometimes boot-shaped lumens. It exists to exercise the pipeline end to end; a model\n"
        "trained on it says nothing about real polyps.\n\n"
        "It is about as hard as MHIST on purpose. How SSA-like an image looks follows its\n"
        "number of SSA votes (of 7) continuously, with noise: 0/7 and 7/7 images are clear,\n"
        "3/7 and 4/7 images look almost alike, and about a third of the votes are split (2-5).\n"
        "Only some crypts of an image show the pattern. Images come in simulated slides of\n"
        "about 8 (drawn regardless of the label, never shared by train and test) that share\n"
        "stain, crypt size, lumen opening, focus and grain, so size and colour alone mislead.\n\n"
        f"generator version {GENERATOR_VERSION}; count={count} size={size} seed={seed}\n"
        f"class counts per partition: {json.dumps(counts, sort_keys=True)}\n\n"
        "Real MHIST: register at https://bmirds.github.io/MHIST/ and point --data-dir at the\n"
        "folder holding its annotations.csv and images/.\n"
    )


def counts_of(rows: list[Row]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        per = counts.setdefault(row.partition, {"HP": 0, "SSA": 0})
        per[row.label] += 1
    return counts


def _prepare_out(out: Path) -> None:
    """Refuse to mix a sample into a folder holding other data (it could be the real MHIST)."""
    if (out / "annotations.csv").exists() and not (out / MARKER_FILE).exists():
        raise SystemExit(
            f"error: {out} already holds an annotations.csv that is not a synthetic sample "
            "(real MHIST?); choose another --out folder."
        )
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for stale in images.glob("MHIST_*.png"):  # left by an earlier sample of another --count
        stale.unlink()


def generate(out: Path, count: int = 400, size: int = 224, seed: int = 0) -> dict:
    """Write the sample; returns the marker dict (also stored as DIR/synthetic.json)."""
    if not 4 <= count <= MAX_COUNT:
        raise ValueError(f"--count must be between 4 and {MAX_COUNT}, got {count}")
    if size < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {size}")
    out = Path(out)
    _prepare_out(out)
    rows = plan_rows(count, seed)

    def write(row: Row) -> None:
        # compress_level=1: the grain makes PNG compress poorly anyway; this keeps writing fast.
        render(row, size, seed).save(out / "images" / row.name, compress_level=1)

    # Threads, not processes: numpy, the blur and zlib release the GIL, and each image has its
    # own generator, so the files do not depend on the thread count or the finishing order.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(write, rows))
    with open(out / "annotations.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        writer.writerows((r.name, r.label, r.votes, r.partition) for r in rows)
    counts = counts_of(rows)
    marker = {
        "synthetic": True,
        "generator": "training.sample_data",
        "generator_version": GENERATOR_VERSION,
        "count": count,
        "size": size,
        "seed": seed,
        "counts": counts,
    }
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    (out / "README.txt").write_text(_readme(count, size, seed, counts))
    return marker


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write a SYNTHETIC dataset in the exact MHIST layout (not real tissue).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--count", type=int, default=400, help="number of images")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        marker = generate(args.out, args.count, args.size, args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = marker["counts"]
    summary = ", ".join(
        f"{part} {c['HP']} HP / {c['SSA']} SSA" for part, c in sorted(counts.items(), reverse=True)
    )
    print(
        f"SYNTHETIC MHIST-layout sample (not real tissue): {args.count} images of "
        f"{args.size}x{args.size} px in {args.out} ({summary}; seed {args.seed}) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
