"""The fine-tuning loop behind `txl train`: bucketed batches, AdamW with warm-up and linear decay, clipping,
early stopping on validation macro-F1, a time budget, and checkpoints that `--resume` continues from.

Under a time budget (`--max-minutes`) that ends before the planned epochs, the schedule runs on the budget's
clock instead of the step count, so the learning rate still reaches zero when training stops (a run cut at a
high learning rate keeps the noisy weights of mid-training; budgeted training: Li et al., ICLR 2020).

Each step reads whole documents with `txl_core.recompute.backward_document`, so a long document costs one
segment's activations, not all of them.

Under torchrun every rank builds the same global batches (same seed) and reads its strided share of each;
the loss is normalised by the global batch, and the gradients are summed over the ranks once per step, so
N processes take the steps one process would. Validation is sharded and gathered, so every rank sees the
same metrics and makes the same early-stopping decision; only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipelines.data.labels import LabelSet
from pipelines.errors import UserError
from pipelines.model.inference import padded, predict, prepare
from pipelines.model.metrics import (
    compute_metrics,
    decided_labels,
    multi_hot,
    tune_thresholds,
)
from pipelines.model.model_dir import ModelDir
from pipelines.runtime import distributed as dist
from pipelines.runtime.device import resolve_precision
from pipelines.runtime.memory import FreeMemoryEvery, tune_cpu_allocator
from pipelines.training.interrupt import StopRequests
from pipelines.training.recipe import (
    Recipe,
    bucketed_batches,
    class_weight_tensor,
    minutes_text,
    param_groups,
    prior_bias,
    schedule_step,
)
from pipelines.training.resume import checkpoint_dir, write_checkpoint
from txl_core.recompute import backward_document


PROBS_FILE = "valid_probs.safetensors"  # in the checkpoint: the best model's validation probabilities


@dataclass
class TrainState:
    epoch: int = 0
    batch: int = 0  # batches done in the current epoch
    step: int = 0
    best_f1: float = -1.0
    best_metrics: dict = field(default_factory=dict)
    bad_evals: int = 0
    seconds: float = 0.0
    stopped: str = ""
    validated_at: int = -1  # the step of the last validation (-1: the checkpoint's own step, as written before)


class Trainer:
    def __init__(self, md: ModelDir, recipe: Recipe, *, train_ids: list[list[int]], train_y: torch.Tensor,
                 valid_texts: list[str], valid_labels: list[str], out: Path, device: torch.device,
                 fresh: list[str] = (), head_fit: bool = False, reserve: float = 0.0):
        self.md, self.recipe, self.out, self.device = md, recipe, Path(out), device
        self.reserve = reserve  # seconds of the budget kept for the last validation (then: the longest measured)
        self.best_probs: np.ndarray | None = None  # (N_valid, L) the best model's probabilities, for the fusion
        self.ids, self.y = train_ids, train_y
        self.valid_texts, self.valid_labels = valid_texts, valid_labels
        self.lengths = [len(x) for x in train_ids]
        self.model = md.model.to(device)
        if device.type == "cpu":  # from the first step, not the first validation's `prepare`: 1.3-1.4x
            tune_cpu_allocator()
        self.precision = resolve_precision(recipe.precision, device, training=True)
        self.weights = class_weight_tensor(train_y, md.model.config.num_labels, recipe.class_weights)
        if md.multi_label and not head_fit:  # a fitted head keeps its bias; a resumed run loads its own
            with torch.no_grad():
                md.model.head.bias.copy_(prior_bias(train_y, self.weights))
        # DDP checks that every rank holds the same shapes and copies rank 0's weights to the others; the
        # gradient sum is done in `step` (see there), not by its hooks.
        self.ddp = None if dist.world() == 1 else DistributedDataParallel(
            self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.opt = torch.optim.AdamW(param_groups(self.model, recipe, set(fresh)), lr=recipe.lr)
        self.steps_per_epoch = math.ceil(len(train_ids) / recipe.batch_size)
        self.total = max(1, self.steps_per_epoch * recipe.epochs)
        self.warm = max(1, int(recipe.warmup * self.total))
        self.state = TrainState()

    # ---- one step -------------------------------------------------------------------------------------------
    def lr_scale(self, elapsed: float) -> float:
        """Linear warm-up over `warmup` of the schedule, then linear decay to 0 at its end: the end of the
        epochs, or of the time budget when that comes first (`elapsed`: seconds of training so far)."""
        budget = self.recipe.max_minutes  # the schedule ends where training must stop: before the last validation
        until = None if budget is None else max(1e-3, budget - self.reserve / 60)
        s = schedule_step(self.state.step, self.total, elapsed, until)
        return min((s + 1) / self.warm, max(0.0, (self.total - s) / max(1, self.total - self.warm)))

    def _loss_fn(self, y: torch.Tensor, y_global: torch.Tensor):
        """The (weighted) mean loss of the global batch, restricted to this rank's documents `y`: the ranks'
        losses add up to the loss of the whole batch, and so do their gradients."""
        w = None if self.weights is None else self.weights.to(self.device)
        if self.md.multi_label:
            n = y_global.numel()  # the mean runs over every (document, label) pair
            return lambda logits: torch.nn.functional.binary_cross_entropy_with_logits(
                logits.float(), y.float(), pos_weight=w, reduction="sum") / n
        n = len(y_global) if w is None else float(w[y_global.to(self.device)].sum())
        return lambda logits: torch.nn.functional.cross_entropy(logits.float(), y, weight=w, reduction="sum") / n

    def _padded(self, docs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, lengths = padded([self.ids[i] for i in docs])
        return ids.to(self.device), lengths.to(self.device)  # (B, N), (B,)

    def step(self, batch: list[int], elapsed: float = 0.0) -> float:
        """One optimiser step on the global `batch`, `elapsed` seconds into training; returns its loss."""
        mine = dist.shard(batch)  # the whole batch in a single process
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        if mine:
            # backward_document calls backward once per segment, while DDP's hooks reduce on the first
            # backward after a forward of the wrapper: it reads the module itself, and the step's gradient
            # is summed over the ranks once, below, after every backward call.
            sync = self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()
            with sync, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                loss, _ = backward_document(self.model, *self._padded(mine),
                                            self._loss_fn(self.y[mine].to(self.device), self.y[batch]),
                                            **self._window(batch))
        loss = dist.sum_gradients(list(self.model.parameters()), loss.float().reshape(1))
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.clip)
        for group in self.opt.param_groups:
            group["lr"] = group["peak_lr"] * self.lr_scale(elapsed)
        self.opt.step()
        return float(loss)

    def _window(self, batch: list[int]) -> dict:
        """The segments this step back-propagates (`backward_document`'s window and first): drawn over the
        global batch from the seed and the step alone, so every rank and a resumed run draw the same ones."""
        window = self.recipe.backprop_segments
        n_segments = -(-max(self.lengths[i] for i in batch) // self.model.config.segment_len)
        if not window or window >= n_segments:
            return {}
        generator = torch.Generator().manual_seed(self.recipe.seed * 1_000_003 + self.state.step)
        return {"window": window, "first": int(torch.randint(0, n_segments - window + 1, (1,), generator=generator))}

    # ---- evaluation -----------------------------------------------------------------------------------------
    def evaluate(self, texts: list[str], labels: list[str]) -> dict:
        """Metrics of the current model; each rank predicts its shard of `texts`, every rank gets the metrics;
        the probabilities (N, L) are kept in `last_probs`.

        Multi-label: the decision thresholds are tuned on these texts first and kept in the model's config.
        """
        self.model.eval()
        prepare(self.md, precision=self.precision, device=str(self.device), keep_weights=True)
        names = self.md.labels
        out = dist.map_sharded(lambda part: [(p.label, [p.probs.get(n, 0.0) for n in names])
                                             for p in predict(self.md, part)], texts)
        probs = self.last_probs = np.array([x[1] for x in out], dtype=np.float32).reshape(len(out), len(names))
        if not self.md.multi_label:
            return compute_metrics(labels, [x[0] for x in out], names, multi_label=False)
        truth = multi_hot([LabelSet(names, True).split(y) for y in labels], names)
        self.md.model.config.thresholds = tune_thresholds(probs, truth)
        predicted = decided_labels(probs, names, self.md.model.config.thresholds)
        return compute_metrics(labels, predicted, names, multi_label=True)

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Rank 0 writes; every rank's random state is kept, so a resumed run replays each rank's dropout."""
        rngs = dist.all_gather_object(torch.get_rng_state())
        if dist.is_main():
            self._write_checkpoint(rngs)
        dist.barrier()

    def _write_checkpoint(self, rngs: list[torch.Tensor]) -> None:
        weights = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        probs = {} if self.best_probs is None else {PROBS_FILE: lambda path: save_file(
            {"probs": torch.from_numpy(np.ascontiguousarray(self.best_probs))}, str(path))}
        write_checkpoint(self.out, {
            "config.json": self.md.model.config.to_json(),  # a resumed run rebuilds this model
            "model.safetensors": lambda path: save_file(weights, str(path)),
            "optim.pt": lambda path: torch.save({"opt": self.opt.state_dict(), "rng": rngs}, path),
            "state.json": json.dumps(asdict(self.state), indent=1), **probs})

    def load_checkpoint(self) -> bool:
        ck = checkpoint_dir(self.out)
        if not (ck / "state.json").is_file():
            return False
        try:
            self.state = TrainState(**json.loads((ck / "state.json").read_text()))
            weights = load_file(str(ck / "model.safetensors"))
            self.model.load_state_dict(weights, strict=False)
            saved = torch.load(ck / "optim.pt", weights_only=True)  # refuses anything but tensors and containers
            peaks = [g["peak_lr"] for g in self.opt.param_groups]  # this call's rates, not the saved ones
            self.opt.load_state_dict(saved["opt"])  # the schedule follows from the step and the time spent
            for group, peak in zip(self.opt.param_groups, peaks, strict=True):
                group["peak_lr"] = peak
            if (ck / PROBS_FILE).is_file():
                self.best_probs = load_file(str(ck / PROBS_FILE))["probs"].numpy()
        except Exception as e:  # json, safetensors, torch and pickle raise many types for a damaged file
            raise UserError(f"the checkpoint in {ck} is damaged or not from this run ({type(e).__name__}); "
                            "delete it to start over, or restore it") from None
        if self.state.stopped.startswith(("time", "no fine-tuning")):  # a resumed run gets the new --max-minutes budget
            self.state.stopped = ""
        rngs = saved["rng"] if isinstance(saved["rng"], list) else [saved["rng"]]
        torch.set_rng_state(rngs[dist.rank()] if len(rngs) == dist.world() else rngs[0])
        return True

    def start_from(self, metrics: dict, on_best, probs: np.ndarray | None = None) -> None:
        """Take the current model, validated elsewhere with `metrics` (and validation probabilities `probs`), as
        the best so far: saved by `on_best` and checkpointed, so fine-tuning keeps a later model only when it
        does better on validation."""
        st = self.state
        st.best_f1, st.best_metrics, st.validated_at = metrics["macro_f1"], metrics, st.step
        self.best_probs = probs
        if dist.is_main():
            on_best(metrics)
        self.save_checkpoint()

    # ---- the loop -------------------------------------------------------------------------------------------
    def elapsed(self, started: float) -> float:
        """Seconds of training over every session of this run, the same figure on every rank."""
        return dist.max_over_ranks(self.state.seconds + time.time() - started)

    def out_of_time(self, elapsed: float) -> bool:
        """Whether the budget ends before another step and the last validation (`reserve` seconds)."""
        budget = self.recipe.max_minutes
        return budget is not None and elapsed + self.reserve > budget * 60

    def fit(self, on_best) -> TrainState:
        """Train until the epochs, the patience or the time budget run out; `on_best(metrics)` saves the model.

        A checkpoint is written after every validation and every `save_every` minutes between them, so a
        killed run loses at most that much work (an epoch of a large data set can take hours on a CPU). Ctrl-C
        (or SIGTERM) stops it after the current step with a checkpoint, losing nothing: `Interrupted` says to
        rerun with --resume; a second Ctrl-C stops at once."""
        with StopRequests() as stop:
            return self._fit(on_best, stop)

    def _fit(self, on_best, stop: "StopRequests") -> TrainState:
        r, st = self.recipe, self.state
        started = last_save = session = time.time()
        first_step, trim = st.step, FreeMemoryEvery(60)
        if st.validated_at < 0:
            st.validated_at = st.step
        n_eval = max(1, min(r.evals_per_epoch, self.steps_per_epoch))
        eval_at = {round(k * self.steps_per_epoch / n_eval) for k in range(1, n_eval + 1)}
        bar = tqdm(total=self.total, initial=st.step, unit="step", dynamic_ncols=True,
                   mininterval=2 if sys.stderr.isatty() else 60,  # a log file gets a line a minute
                   disable=not dist.is_main())
        while st.epoch < r.epochs and not st.stopped:
            batches = bucketed_batches(self.lengths, batch_size=r.batch_size, seed=r.seed + st.epoch)
            while st.batch < len(batches):
                elapsed = self.elapsed(started)  # clocks differ: all ranks stop at the same step
                if self.out_of_time(elapsed):
                    minutes = r.max_minutes if r.max_minutes is None else round(r.max_minutes, 1)
                    st.stopped = "no fine-tuning: the plan gave the budget to reading" if r.max_minutes == 0 else \
                        f"time budget of {minutes} min reached"
                    break
                t0, batch = time.time(), batches[st.batch]
                loss = self.step(batch, elapsed)
                if self.device.type == "cpu":
                    trim.tick()
                st.batch, st.step = st.batch + 1, st.step + 1
                tokens = sum(self.lengths[i] for i in batch)
                bar.set_postfix(epoch=st.epoch, loss=f"{loss:.3f}", tok_s=f"{tokens / (time.time() - t0):,.0f}",
                                left=self._time_left(st.seconds + time.time() - started, first_step, session))
                bar.update(1)
                if st.batch in eval_at:
                    self._validate(on_best)
                    if st.stopped:
                        break
                elif not dist.any_rank(stop.requested or time.time() - last_save >= 60 * r.save_every):
                    continue
                rolled = st.batch >= len(batches)  # the checkpoint resumes at the next epoch's first batch
                if rolled:
                    st.epoch, st.batch = st.epoch + 1, 0
                st.seconds += time.time() - started
                started = last_save = time.time()
                self.save_checkpoint()
                if st.epoch < r.epochs and dist.any_rank(stop.requested):  # (when finished, it finishes)
                    bar.close()
                    raise stop.stopped(st.step, self.total, self.out)
                if rolled:
                    break
            if st.batch >= len(batches):
                st.epoch, st.batch = st.epoch + 1, 0
        bar.close()
        if st.stopped.startswith(("time", "no fine-tuning")) and (st.best_f1 < 0 or st.step > st.validated_at):
            # the steps since the last evaluation get theirs, in the time kept for it (and a budget shorter than
            # one evaluation still leaves a model)
            self._validate(on_best)
        st.seconds += time.time() - started
        self.save_checkpoint()
        return st

    def _time_left(self, seconds: float, first_step: int, session: float) -> str:
        """Minutes to the end at this session's pace (validations included), or to the budget if sooner."""
        steps = self.state.step - first_step
        left = (time.time() - session) / max(1, steps) * (self.total - self.state.step)
        if self.recipe.max_minutes is not None:
            left = min(left, max(0.0, 60 * self.recipe.max_minutes - seconds))
        return minutes_text(left)

    def _validate(self, on_best) -> None:
        st, started = self.state, time.time()
        st.validated_at = st.step
        metrics = self.evaluate(self.valid_texts, self.valid_labels)
        self.reserve = max(self.reserve, dist.max_over_ranks(time.time() - started))
        if dist.is_main():
            tqdm.write(f"step {st.step}: validation accuracy {metrics['accuracy']:.4f} "
                       f"macro-F1 {metrics['macro_f1']:.4f} micro-F1 {metrics['micro_f1']:.4f}")
        if metrics["macro_f1"] > st.best_f1:
            st.best_f1, st.best_metrics, st.bad_evals = metrics["macro_f1"], metrics, 0
            self.best_probs = self.last_probs
            if dist.is_main():
                on_best(metrics)
        else:
            st.bad_evals += 1
            if st.bad_evals >= self.recipe.patience:
                st.stopped = f"no validation gain in {self.recipe.patience} evaluations"
