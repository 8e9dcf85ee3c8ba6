"""Training stage: MHIST data, ResNet18 training tracked in MLflow, checkpoints with a card."""

CLASSES: tuple[str, str] = ("HP", "SSA")  # logit order; SSA (precancerous) is the positive class
POSITIVE_CLASS = "SSA"
