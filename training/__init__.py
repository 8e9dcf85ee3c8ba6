"""Training stage: MHIST data, ResNet18 training tracked in MLflow, checkpoints with a card."""

from services.core.metadata import DEFAULT_MPP as MHIST_MPP

CLASSES: tuple[str, str] = ("HP", "SSA")  # logit order; SSA (precancerous) is the positive class
POSITIVE_CLASS = "SSA"
# MHIST patches are 224 px at about 2.0 µm/px (5×); a network fed them resized to S px sees
# 2.0 × 224 / S µm per input pixel. The synthetic sample draws the same field of view.
MHIST_PATCH_PX = 224


def input_mpp(image_size: int) -> float:
    """µm per pixel of the network input when MHIST-like patches are resized to `image_size`."""
    return MHIST_MPP * MHIST_PATCH_PX / image_size
