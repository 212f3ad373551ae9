"""The recipe of fine-tuning and its pure parts: the settings, length-bucketed batches, loss weights against
imbalance, the multi-label prior bias, the learning-rate schedule's position under a time budget, AdamW's
parameter groups."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from pipelines.errors import UserError


@dataclass
class Recipe:
    """Optimisation settings; every field is a `txl train` flag."""

    epochs: int = 8
    batch_size: int = 16
    lr: float = 2e-3
    fresh_lr: float | None = None  # the parameters a start does not supply (Trainer's `fresh`); None: `lr`
    weight_decay: float = 0.01
    warmup: float = 0.06
    clip: float = 1.0
    patience: int = 3
    evals_per_epoch: int = 1
    class_weights: str = "sqrt"  # none | sqrt | balanced
    save_every: float = 10.0  # minutes between resumable checkpoints (also after every validation); 0 = every step
    precision: str = "auto"  # auto: bf16 autocast on a GPU, float32 on a CPU (bf16 there: --precision bf16)
    max_minutes: float | None = None
    seed: int = 0
    backprop_segments: int = 8  # consecutive segments back-propagated per step (a random window); 0: all

    def __post_init__(self):
        if self.precision not in ("auto", "float32", "bf16"):
            raise UserError(f"--precision {self.precision}: training runs in auto, float32 or bf16")


def bucketed_batches(lengths: list[int], *, batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of documents of similar length (sorted within windows of 50 batches)."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def class_weight_tensor(targets: torch.Tensor, n_labels: int, how: str) -> torch.Tensor | None:
    """Loss weights against imbalance, `how` = none | sqrt | balanced.

    Single-label: per class, N / (K n_c) or its square root (mean 1 over documents). Multi-label: per label, the
    weight of its positive examples against its negative ones, n_neg / n_pos or its square root (rare labels
    are mostly negatives; weighting whole label columns instead let their negatives dominate the loss).
    """
    if how == "none":
        return None
    if targets.dim() == 2:
        positives = targets.sum(0)
        w = (len(targets) - positives).clamp(min=1) / positives.clamp(min=1)
    else:
        counts = torch.bincount(targets, minlength=n_labels)
        w = counts.sum() / (n_labels * counts.clamp(min=1).float())
    return w.sqrt() if how == "sqrt" else w


def prior_bias(targets: torch.Tensor, pos_weight: torch.Tensor | None) -> torch.Tensor:
    """Multi-label head bias at which a document-blind model's (weighted) loss is smallest: each label's
    log-odds. Starting there, the first gradients carry what tells documents apart, not the label frequencies;
    from a zero bias, fitting 90 rare labels' frequencies collapsed a pre-trained encoder to one output."""
    n, positives = len(targets), targets.sum(0).float()
    p = (positives + 0.5) / (n + 1.0)  # smoothed: a label without examples gets a finite bias
    w = torch.ones_like(p) if pos_weight is None else pos_weight.float()
    return torch.log(w * p / (1 - p))


def schedule_step(step: int, total: int, elapsed: float, max_minutes: float | None) -> float:
    """Where a schedule of `total` steps stands: the steps done, or as far as the `elapsed` seconds have used
    up a time budget meant for the whole schedule, whichever is further (fractional; `txl train` and `txl
    pretrain` both decay their learning rate to zero by the end of a budget that ends first)."""
    by_time = total * elapsed / (60 * max_minutes) if max_minutes else 0.0
    return max(float(step), by_time)


def minutes_text(seconds: float) -> str:
    """A progress bar's time left: `12.5min`, or `2h05m` from an hour up."""
    minutes = seconds / 60
    return f"{minutes:.1f}min" if minutes < 60 else f"{int(minutes // 60)}h{int(minutes % 60):02d}m"


def param_groups(model: torch.nn.Module, recipe: Recipe, fresh: set[str]) -> list[dict]:
    """AdamW's groups: matrices with weight decay, the rest (embeddings, biases, norms) without; and, when
    `recipe.fresh_lr` is set, the parameters named in `fresh` (those a pre-trained start did not supply) at that
    peak rate, the others at `recipe.lr`. A group's `peak_lr` is scaled by the schedule at every step."""
    groups = {}
    for name, p in model.named_parameters():
        own = recipe.fresh_lr is not None and name in fresh
        decay = p.dim() >= 2 and "emb" not in name
        key = (own, decay)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": recipe.weight_decay if decay else 0.0,
                           "peak_lr": recipe.fresh_lr if own else recipe.lr}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]  # decay first, as before
