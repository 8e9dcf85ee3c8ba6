"""Train ResNet18 on MHIST (HP vs SSA), tracked in MLflow; the best checkpoint is the product.

    python training/train.py --data-dir data/mhist [--epochs 10] [--weights imagenet|none|PATH]
    python -m training --data-dir data/sample --weights none --image-size 64 --epochs 2

Shape after torchvision's references/classification/train.py: get_args_parser(), main(args),
train_one_epoch(), evaluate() -> dict, and small builders for data, model, optimizer, scheduler.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. With DataLoader
# workers (or anything else) sharing a small machine, spinning threads steal the cores they
# wait for; measured on the 2-core VM under load: 4.6 s → 1.2 s per ResNet18 step. Set the
# variable yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # after the OpenMP setting above, like every import below
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm.auto import tqdm

from services.core.preprocessing import PreprocessSpec
from training import CLASSES, POSITIVE_CLASS, input_mpp
from training.checkpoint import CARD_FILE, save_checkpoint
from training.data import (
    Augment,
    DatasetError,
    MHISTDataset,
    Record,
    annotations_sha256,
    class_counts,
    format_counts,
    is_synthetic,
    load_annotations,
    split_sha256,
    split_train_val,
)
from training.metrics import (
    agreement_metrics,
    binary_metrics,
    format_agreement,
    format_auc,
    roc_auc_interval,
    select_threshold,
)
from training.model import ARCHITECTURE, WeightsError, build_model
from training.provenance import (
    DEFAULT_TRACKING_URI,
    TrackingUnreachable,
    absolute_tracking_uri,
    check_tracking_reachable,
    git_commit,
)
from training.tracking import (
    log_card,
    log_config,
    log_dataset,
    log_epoch,
    log_results,
    log_trained_model,
    start_training_run,
)

SYNTHETIC_WARNING = (
    "SYNTHETIC data (training.sample_data): these numbers test the pipeline, "
    "they say nothing about real polyps"
)


@dataclass
class TrainConfig:
    """Everything that defines a run; logged once to MLflow and stored in the model card."""

    data_dir: str = "data/sample"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    weights: str = "imagenet"
    image_size: int = 224
    mpp: float | None = None  # µm/px of the network input; None: input_mpp(image_size)
    val_fraction: float = 0.2
    seed: int = 0
    workers: int = 2
    imbalance: str = "weighted-loss"  # | "sampler" | "none"
    soft_labels: bool = False  # train on the SSA vote share (votes / 7) instead of the label
    patience: int = 5  # epochs without a better checkpoint before stopping; 0 = never stop early
    threshold_rule: str = "youden"  # | "sensitivity"
    target_sensitivity: float = 0.9
    tracking_uri: str = DEFAULT_TRACKING_URI
    experiment: str = "mhist"
    registered_model: str = "mhist-resnet18"
    register: bool = True
    out: str = "artifacts"
    device: str = "auto"  # | "cpu" | "cuda"
    amp: bool = True  # mixed precision; only ever used on CUDA
    run_name: str | None = None
    extra: dict = field(default_factory=dict)  # derived facts (device, amp in effect, sizes)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        description="Train ResNet18 on MHIST (HP vs SSA) with MLflow tracking", add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data-dir", default=d.data_dir,
                   help="MHIST folder holding annotations.csv and images/")
    p.add_argument("--epochs", type=int, default=d.epochs, help="maximum number of epochs")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per batch")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate (cosine decay)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--weights", default=d.weights,
                   help="initial weights: imagenet (download), none (from scratch) or PATH to a "
                        "ResNet18 state_dict/checkpoint")
    p.add_argument("--image-size", type=int, default=d.image_size,
                   help="network input side in pixels (MHIST patches are 224)")
    p.add_argument("--mpp", type=float, default=d.mpp,
                   help="microns per pixel of the network input, stored in the checkpoint and "
                        "the ONNX metadata for whole-slide inference (default: MHIST's 2.0 "
                        "µm/px × 224 / --image-size)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of the train partition held out (stratified) for model selection")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed for split, init, order, augmentation")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--imbalance", choices=("weighted-loss", "sampler", "none"), default=d.imbalance,
                   help="class-imbalance handling: class-weighted loss, balanced sampler, or none")
    p.add_argument("--soft-labels", action=argparse.BooleanOptionalAction, default=d.soft_labels,
                   help="train on the share of the 7 annotators who voted SSA (soft target "
                        "votes/7 for the 2-class cross-entropy) instead of the majority label; "
                        "validation, threshold and metrics still use the label")
    p.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many epochs without a better checkpoint (val AUC, "
                        "ties broken by val loss); 0: never stop early")
    p.add_argument("--threshold-rule", choices=("youden", "sensitivity"), default=d.threshold_rule,
                   help="decision threshold chosen on validation: max Youden's J, or the highest "
                        "threshold reaching --target-sensitivity for SSA")
    p.add_argument("--target-sensitivity", type=float, default=d.target_sensitivity,
                   help="SSA sensitivity to reach with --threshold-rule sensitivity")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", d.tracking_uri),
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--experiment", default=d.experiment, help="MLflow experiment name")
    p.add_argument("--run-name", default=d.run_name, help="MLflow run name (default: generated)")
    p.add_argument("--registered-model", default=d.registered_model,
                   help="MLflow registered model name for the trained model")
    p.add_argument("--no-register", dest="register", action="store_false",
                   help="log the model to the run but do not register a version")
    p.add_argument("--out", default=d.out, help="folder for best.pt (the best checkpoint)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device,
                   help="auto: CUDA when available, else CPU")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d.amp,
                   help="mixed precision (float16 autocast) on CUDA; ignored on CPU")
    return p


class ConfigError(ValueError):
    """A flag value that cannot work; the message names the flag."""


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    known = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(**known)
    if cfg.mpp is None and cfg.image_size >= 1:
        cfg.mpp = input_mpp(cfg.image_size)
    checks = [
        (cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}"),
        (cfg.batch_size >= 2, f"--batch-size must be at least 2 (BatchNorm), got {cfg.batch_size}"),
        (cfg.image_size >= 16, f"--image-size must be at least 16 pixels, got {cfg.image_size}"),
        (cfg.mpp is not None and 0.0 < cfg.mpp < float("inf"),
         f"--mpp must be a positive number of microns per pixel, got {cfg.mpp}"),
        (0.0 < cfg.val_fraction < 1.0, f"--val-fraction must be in (0, 1), got {cfg.val_fraction}"),
        (cfg.workers >= 0 and cfg.patience >= 0, "--workers and --patience cannot be negative"),
        (0.0 < cfg.target_sensitivity <= 1.0,
         f"--target-sensitivity must be in (0, 1], got {cfg.target_sensitivity}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return cfg


# ---------------------------------------------------------------- builders


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA
    # warn_only: some CUDA kernels have no deterministic version; CPU runs are bit-repeatable.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible; use --device cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass
class Data:
    records: list[Record]
    train: list[Record]
    val: list[Record]
    test: list[Record]
    spec: PreprocessSpec
    synthetic: bool
    counts: dict
    loaders: dict[str, DataLoader] = field(default_factory=dict)


def build_data(cfg: TrainConfig, device: torch.device) -> Data:
    records = load_annotations(cfg.data_dir)
    train, val = split_train_val(records, cfg.val_fraction, cfg.seed)
    test = sorted((r for r in records if r.partition == "test"), key=lambda r: r.name)
    # The serving preprocessing at the training resolution: resize to S, centre crop S.
    spec = PreprocessSpec(size=cfg.image_size, resize_size=cfg.image_size)
    counts = {
        "partitions": class_counts(records),
        "splits": {name: class_counts(recs).get(part, dict.fromkeys(CLASSES, 0))
                   for name, recs, part in (("train", train, "train"), ("val", val, "train"),
                                            ("test", test, "test"))},
    }
    data = Data(records, train, val, test, spec, is_synthetic(cfg.data_dir), counts)
    data.loaders = build_loaders(data, cfg, device)
    return data


def build_loaders(data: Data, cfg: TrainConfig, device: torch.device) -> dict[str, DataLoader]:
    generator = torch.Generator().manual_seed(cfg.seed)  # shuffling, sampling, worker seeds
    train_ds = MHISTDataset(data.train, data.spec, augment=Augment(),
                            soft_targets=cfg.soft_labels)
    sampler = None
    if cfg.imbalance == "sampler":
        per_class = np.bincount(train_ds.targets, minlength=len(CLASSES))
        weights = 1.0 / per_class[train_ds.targets]  # every class drawn equally often
        sampler = WeightedRandomSampler(weights.tolist(), len(train_ds), generator=generator)
    common = {"batch_size": cfg.batch_size, "num_workers": cfg.workers,
              "pin_memory": device.type == "cuda", "persistent_workers": cfg.workers > 0}
    return {
        # drop_last only when the last batch would hold 1 image: BatchNorm cannot train on it.
        "train": DataLoader(train_ds, shuffle=sampler is None, sampler=sampler,
                            generator=generator, drop_last=len(train_ds) % cfg.batch_size == 1,
                            **common),
        "val": DataLoader(MHISTDataset(data.val, data.spec), shuffle=False, **common),
        "test": DataLoader(MHISTDataset(data.test, data.spec), shuffle=False, **common),
    }


def build_criterion(cfg: TrainConfig, train: list[Record], device: torch.device) -> nn.Module:
    if cfg.imbalance != "weighted-loss":
        return nn.CrossEntropyLoss()
    per_class = np.bincount([r.target for r in train], minlength=len(CLASSES)).astype(np.float64)
    # n / (k * n_c): each class contributes equally to the loss; weights average to ~1.
    weights = per_class.sum() / (len(CLASSES) * np.maximum(per_class, 1.0))
    return nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and bias parameters (1-D): decaying them only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    # Cosine per batch, not per epoch, so a 1-2 epoch run still anneals.
    total = max(cfg.epochs * steps_per_epoch, 1)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)


# ---------------------------------------------------------------- one epoch, one evaluation


def train_one_epoch(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
    scaler: torch.amp.GradScaler, loader: DataLoader, device: torch.device, epoch: int, amp: bool,
) -> dict:
    """One pass over the train split; metrics come from the (augmented) training forward passes."""
    model.train()
    lr = optimizer.param_groups[0]["lr"]  # the epoch's starting rate (the schedule is per batch)
    total_loss, probs, targets = 0.0, [], []
    for images, target in tqdm(loader, desc=f"epoch {epoch} train", unit="batch", leave=False,
                               disable=None):
        images = images.to(device, non_blocking=True)  # (N, 3, S, S)
        target = target.to(device, non_blocking=True)  # (N,) labels, or (N, 2) with soft labels
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(images)  # (N, 2)
            loss = criterion(logits, target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.item() * len(target)  # .item() syncs with the GPU once per batch
        probs.append(torch.softmax(logits.detach().float(), dim=1)[:, 1].cpu())
        targets.append(_hard(target).cpu())
    y, p = torch.cat(targets).numpy(), torch.cat(probs).numpy()
    return {"loss": total_loss / max(len(y), 1), "metrics": binary_metrics(y, p), "lr": lr}


def _hard(target: torch.Tensor) -> torch.Tensor:
    """Class indices (N,) from labels (N,) or soft targets (N, 2): SSA iff >= 4 of 7 votes."""
    return target if target.ndim == 1 else (target[:, 1] >= 0.5).long()


@torch.inference_mode()
def evaluate(
    model: nn.Module, criterion: nn.Module, loader: DataLoader, device: torch.device,
    amp: bool = False, threshold: float = 0.5, desc: str = "eval",
) -> dict:
    """{"loss", "probs" (P(SSA) per image), "targets", "metrics" at `threshold`}."""
    model.eval()
    total_loss, probs, targets = 0.0, [], []
    for images, target in tqdm(loader, desc=desc, unit="batch", leave=False, disable=None):
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(images)  # (N, 2)
        total_loss += criterion(logits.float(), target).item() * target.numel()
        probs.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
        targets.append(target.cpu())
    y, p = torch.cat(targets).numpy(), torch.cat(probs).numpy().astype(np.float64)
    metrics = binary_metrics(y, p, threshold)
    metrics["loss"] = total_loss / max(len(y), 1)
    return {"loss": metrics["loss"], "probs": p, "targets": y, "metrics": metrics}


# ---------------------------------------------------------------- the loop


def fit(model, data: Data, cfg: TrainConfig, device, amp: bool, card: dict) -> dict:
    """Train with early stopping on val AUC; writes OUT/best.pt at every improvement."""
    criterion = build_criterion(cfg, data.train, device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(data.loaders["train"]))
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    best = {"epoch": 0, "val_auc": None, "val_loss": None, "state": None}
    ckpt = Path(cfg.out) / "best.pt"
    bar = tqdm(range(1, cfg.epochs + 1), desc="epochs", unit="epoch", disable=None)
    for epoch in bar:
        start = time.perf_counter()
        train = train_one_epoch(model, criterion, optimizer, scheduler, scaler,
                                data.loaders["train"], device, epoch, amp)
        val = evaluate(model, criterion, data.loaders["val"], device, amp,
                       desc=f"epoch {epoch} val")
        agreement = agreement_metrics(val["targets"], val["probs"], _votes(data.val))
        log_epoch(epoch, train, val, agreement)
        auc = val["metrics"]["roc_auc"]
        if _better(auc, val["loss"], best):
            # Copy now: the optimizer keeps changing the live tensors.
            best = {"epoch": epoch, "val_auc": auc, "val_loss": val["loss"],
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            save_checkpoint(ckpt, model, {**card, "best_epoch": epoch})
        tqdm.write(_epoch_line(epoch, cfg.epochs, train, val, best, time.perf_counter() - start))
        if cfg.patience and epoch - best["epoch"] >= cfg.patience:
            tqdm.write(f"early stop: val AUC has not improved for {cfg.patience} epochs")
            break
    bar.close()
    model.load_state_dict(best["state"])
    return {"best_epoch": best["epoch"], "best_val_auc": best["val_auc"], "epochs_run": epoch,
            "criterion": criterion, "checkpoint": ckpt}


def _votes(records: list[Record]) -> list[int]:
    """SSA votes per image, in the order of the split's (unshuffled) loader."""
    return [r.votes for r in records]


def _better(auc: float | None, loss: float, best: dict) -> bool:
    """Higher val AUC wins; at equal AUC (it saturates at 1.0 on easy data) lower val loss."""
    if best["state"] is None:
        return True
    if auc is None:  # one class only in val: AUC undefined, keep the first checkpoint
        return False
    if best["val_auc"] is None or auc > best["val_auc"]:
        return True
    return auc == best["val_auc"] and loss < best["val_loss"]


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def _epoch_line(epoch, epochs, train, val, best, seconds) -> str:
    t, v = train["metrics"], val["metrics"]
    mark = " *" if best["epoch"] == epoch else ""
    return (f"epoch {epoch}/{epochs}  train loss {train['loss']:.4f} auc {_fmt(t['roc_auc'])}"
            f" | val loss {val['loss']:.4f} auc {_fmt(v['roc_auc'])} bal.acc "
            f"{v['balanced_accuracy']:.3f} | lr {train['lr']:.2e} | {seconds:.1f}s{mark}")


# ---------------------------------------------------------------- main


def main(args: argparse.Namespace) -> dict:
    """Run training; returns a summary (run id, version, checkpoint, card)."""
    cfg = config_from_args(args)
    try:  # before any data is read: a dead tracking server is one line, not 100 s of retries
        check_tracking_reachable(cfg.tracking_uri)
    except TrackingUnreachable as exc:
        raise ConfigError(str(exc)) from None
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    amp = cfg.amp and device.type == "cuda"
    cfg.extra = {"device": device.type, "amp_in_effect": amp, "torch": str(torch.__version__)}
    data = build_data(cfg, device)
    # With seed and val_fraction, this lets export re-derive the validation split for its
    # gates and prove it is this one (stored in the card's config and as an MLflow param).
    cfg.extra["val_split_sha256"] = split_sha256(data.val)
    print(f"data: {Path(cfg.data_dir).resolve()} — {format_counts(data.counts['partitions'])}")
    print(f"splits (val stratified from train, seed {cfg.seed}): "
          f"{json.dumps(data.counts['splits'])}")
    if data.synthetic:
        print(SYNTHETIC_WARNING)
    # Built before the MLflow run starts, so an offline `--weights imagenet` fails fast and
    # leaves no failed run behind.
    model = build_model(cfg.weights, num_classes=len(CLASSES)).to(device)

    with start_training_run(cfg, data) as run:
        dataset = log_dataset(data, cfg)
        log_config(cfg, data)
        card = base_card(cfg, data, dataset.digest, run)
        fitted = fit(model, data, cfg, device, amp, card)
        card = finish(model, data, cfg, device, amp, fitted, card)
        card = log_trained_model(model, data, cfg, device, card)
        card = json.loads(json.dumps(card))  # plain JSON types: tuples → lists, as stored
        save_checkpoint(fitted["checkpoint"], model, card)
        (Path(cfg.out) / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        log_card(card)
    return report(card, fitted["checkpoint"], data.synthetic)


def base_card(cfg: TrainConfig, data: Data, digest: str, run) -> dict:
    return {
        "architecture": ARCHITECTURE,
        "classes": list(CLASSES),
        "positive_class": POSITIVE_CLASS,
        "threshold": 0.5,
        "threshold_rule": "provisional (training not finished)",
        "preprocessing": data.spec.to_dict(),
        "metrics": {},
        "config": asdict(cfg),
        "mlflow": {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                   "tracking_uri": absolute_tracking_uri(cfg.tracking_uri),
                   "registered_model": cfg.registered_model if cfg.register else None,
                   "version": None},
        "git_commit": git_commit(),
        "dataset": {"digest": digest, "counts": data.counts, "synthetic": data.synthetic,
                    "annotations_sha256": annotations_sha256(cfg.data_dir),
                    "path": str(Path(cfg.data_dir).resolve())},
    }


def finish(model, data: Data, cfg: TrainConfig, device, amp: bool, fitted: dict, card: dict):
    """Threshold on val, metrics on test (at it and at 0.5), plots and JSON logged."""
    criterion = fitted["criterion"]
    val = evaluate(model, criterion, data.loaders["val"], device, amp, desc="best on val")
    threshold, rule = select_threshold(val["targets"], val["probs"], cfg.threshold_rule,
                                       cfg.target_sensitivity)
    val["metrics"] = {**binary_metrics(val["targets"], val["probs"], threshold, interval=True),
                      "loss": val["loss"]}
    test = evaluate(model, criterion, data.loaders["test"], device, amp, threshold, desc="test")
    test["metrics"]["roc_auc_ci95"] = roc_auc_interval(test["targets"], test["probs"])
    metrics = {"val": val["metrics"], "test": test["metrics"],
               "test_at_0.5": {**binary_metrics(test["targets"], test["probs"], 0.5),
                               "loss": test["loss"]},
               # Split by how far the 7 annotators agreed, at the chosen threshold.
               "val_agreement": agreement_metrics(val["targets"], val["probs"],
                                                  _votes(data.val), threshold),
               "test_agreement": agreement_metrics(test["targets"], test["probs"],
                                                   _votes(data.test), threshold)}
    step = fitted["best_epoch"]
    log_results({"val": val, "test": test}, metrics, data, threshold, rule, step)
    return {**card, "threshold": threshold, "threshold_rule": rule, "metrics": metrics,
            "best_epoch": step, "epochs_run": fitted["epochs_run"]}


def report(card: dict, checkpoint: Path, synthetic: bool) -> dict:
    m = card["metrics"]
    ml = card["mlflow"]

    def line(x: dict) -> str:
        return (f"acc {x['accuracy']:.3f}  sens {x['sensitivity']:.3f}  spec {x['specificity']:.3f}"
                f"  prec {x['precision']:.3f}  F1 {x['f1']:.3f}  bal.acc "
                f"{x['balanced_accuracy']:.3f}  AUC {format_auc(x)}")

    print(f"run id      : {ml['run_id']} (experiment {ml['experiment_id']}, {ml['tracking_uri']})")
    print(f"registered  : {ml['registered_model']} version {ml['version']}" if ml["version"]
          else f"registered  : no (model at {ml['model_uri']})")
    print(f"checkpoint  : {Path(checkpoint).resolve()}")
    print(f"threshold   : {card['threshold']:.4f} ({card['threshold_rule']}, chosen on validation)")
    print(f"val @thr    : {line(m['val'])}  cm {m['val']['confusion_matrix']}")
    print(f"val agree.  : {format_agreement(m['val_agreement'])}")
    print(f"test @thr   : {line(m['test'])}  cm {m['test']['confusion_matrix']}")
    print(f"test agree. : {format_agreement(m['test_agreement'])}")
    print(f"test @0.5   : {line(m['test_at_0.5'])}  cm {m['test_at_0.5']['confusion_matrix']}")
    if synthetic:
        print(SYNTHETIC_WARNING)
    return {"run_id": ml["run_id"], "version": ml["version"], "model_uri": ml["model_uri"],
            "checkpoint": str(checkpoint), "card": card}


def cli(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    try:
        main(args)
    except (ConfigError, DatasetError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    cli()
