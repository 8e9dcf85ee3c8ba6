"""Section 5: image and Python env sizes against the size goal."""

from __future__ import annotations

from benchmarks import BASELINE
from benchmarks.report.goals import GOALS
from benchmarks.report.records import ImageSize, SizeSection
from benchmarks.report.text import container_label, num, ratio, table, target_name
from services.targets import TARGETS


def _label(key: str, rec: ImageSize) -> str:
    mounted = rec.target in TARGETS and not TARGETS[rec.target].bakes_model
    if key == BASELINE and not rec.slimmed:
        # Runs before the baseline was slimmed (or that could not tell) hold a whole Debian
        # base: never to be read as the same kind of image as the slimmed ONNX ones.
        return f"{container_label(key)} (**not slimmed**: whole base image)"
    return (f"{target_name(rec.target)} container (model mounted, not in the image)"
            if mounted else container_label(key))


def _row(key: str, rec: ImageSize, torch_mb: float | None) -> list:
    top = ", ".join(f"{package} {mb:.0f}" for package, mb in rec.top_packages[:4])
    goal = ("–" if key == BASELINE else
            "yes" if rec.image_mb <= GOALS.image_size_mb else "**no**")
    return [_label(key, rec), num(rec.image_mb, 0), num(rec.venv_mb, 0), goal,
            ratio(rec.image_mb, torch_mb), top]


def size_section(size: SizeSection | None) -> str:
    if size is None:
        return "## 5. Size\n\nNo data."
    torch = size.images.get(BASELINE)
    rows = [_row(key, rec, torch.image_mb if torch else None) for key, rec in size.images.items()]
    text = ["## 5. Size", "", table(["image", "image MB", "/opt/venv MB",
                                     f"≤ {GOALS.image_size_mb} MB", "÷ PyTorch image",
                                     "largest packages (MB)"], rows)]
    if size.base_image_mb:
        slim = bool(torch and torch.slimmed)
        text.append(f"\nBase image {size.base_image}: {size.base_image_mb:.0f} MB. "
                    + ("Every image, the PyTorch baseline included, is built on it and slimmed "
                       "the same way: its "
                       if slim else "The PyTorch baseline is built on it; the ONNX images' ")
                    + "final stage starts from an empty root and takes from it only the "
                    "interpreter, the standard library and the shared libraries serving loads "
                    "(services/install-venv.sh)."
                    + ("" if slim or torch is None else " The baseline was not slimmed in this "
                       "run, so \"÷ PyTorch image\" sets unlike images side by side."))
    return "\n".join(text)
