"""The training loop behind `txl pretrain`: segments of B parallel streams with memory carried across them,
AdamW with warm-up and cosine decay, clipping at 0.25 (the paper's), a time budget, and checkpoints that
`--resume` continues from exactly: weights, optimizer, RNG, stream position and the memory itself.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from tqdm import tqdm

from pipelines.data.lm_stream import batchify, n_segments, segment, segment_nll
from pipelines.data.writers import write_atomic
from pipelines.training.interrupt import StopRequests
from pipelines.training.recipe import minutes_text, schedule_step
from pipelines.training.resume import checkpoint_dir, write_checkpoint
from txl_core import TXLLMHeadModel


@dataclass
class LMRecipe:
    """Optimisation settings; every field is a `txl pretrain` flag."""

    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 200  # steps of linear warm-up
    clip: float = 0.25
    epochs: int = 1  # passes over the stream, when --max-steps is not given
    max_steps: int | None = None
    max_minutes: float | None = None
    save_every: float = 10.0  # minutes between checkpoints; 0 = after every step
    seed: int = 0


@dataclass
class LMState:
    step: int = 0  # optimizer steps done; the stream position is step mod segments per pass
    tokens: int = 0
    seconds: float = 0.0
    loss: float = float("nan")  # moving average of the training NLL per token
    stopped: str = ""


class LMTrainer:
    def __init__(self, model: TXLLMHeadModel, recipe: LMRecipe, *, train: torch.Tensor, out: Path,
                 device: torch.device):
        self.model, self.recipe, self.out = model.to(device), recipe, Path(out)
        self.segment_len = model.config.segment_len
        self.data = batchify(train, recipe.batch_size).to(device)  # (B, W)
        self.n_seg = n_segments(self.data, self.segment_len)
        self.total = recipe.max_steps or recipe.epochs * self.n_seg
        params = dict(model.named_parameters())  # tied tensors appear once
        decay = [p for n, p in params.items() if p.dim() >= 2 and "emb" not in n and "crit" not in n]
        other = [p for n, p in params.items() if not any(p is q for q in decay)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                      {"params": other, "weight_decay": 0.0}], lr=recipe.lr)
        self.state, self.mems = LMState(), None

    def start(self, tokenizer) -> None:
        """A fresh run: the settings and tokenizer a --resume rebuilds the model from; any older checkpoint
        stops being resumable."""
        ck = checkpoint_dir(self.out)
        ck.mkdir(parents=True, exist_ok=True)
        (ck / "state.json").unlink(missing_ok=True)
        write_atomic(ck / "config.json", self.model.config.to_json())
        write_atomic(ck / "tokenizer.json", tokenizer.to_str())

    def lr_scale(self, elapsed: float) -> float:
        """Linear warm-up, then cosine decay to 0 over the steps or the time budget, whichever ends first."""
        r, step = self.recipe, self.state.step
        progress = schedule_step(step, self.total, elapsed, r.max_minutes) / self.total
        return min(1.0, (step + 1) / max(1, r.warmup)) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def step(self, elapsed: float) -> float:
        position = self.state.step % self.n_seg
        if position == 0:
            self.mems = None  # a new pass over the stream: the memory of its end is not this segment's past
        inputs, targets = segment(self.data, position, self.segment_len)
        self.model.train()
        nll, self.mems = segment_nll(self.model, inputs, targets, mems=self.mems)
        loss = nll.mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.clip)
        for group in self.opt.param_groups:
            group["lr"] = self.recipe.lr * self.lr_scale(elapsed)
        self.opt.step()
        self.state.tokens += targets.numel()
        return float(loss.detach())

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        mems = {str(i): m.detach().contiguous().cpu() for i, m in enumerate(self.mems or [])}
        write_checkpoint(self.out, {
            "model.safetensors": lambda p: save_model(self.model, str(p)),
            "mems.safetensors": lambda p: save_file(mems, str(p)),
            "optim.pt": lambda p: torch.save({"opt": self.opt.state_dict(), "rng": torch.get_rng_state()}, p),
            "state.json": json.dumps(asdict(self.state), indent=1)})

    def load_checkpoint(self) -> None:
        ck = checkpoint_dir(self.out)
        self.state = LMState(**json.loads((ck / "state.json").read_text()))
        if self.state.stopped.startswith("time"):  # a resumed run gets the new --max-minutes budget
            self.state.stopped = ""
        device = self.data.device
        load_model(self.model, str(ck / "model.safetensors"), device=str(device))
        saved = torch.load(ck / "optim.pt", weights_only=True)
        self.opt.load_state_dict(saved["opt"])
        torch.set_rng_state(saved["rng"])
        mems = load_file(str(ck / "mems.safetensors"), device=str(device))
        self.mems = [mems[str(i)] for i in range(len(mems))] or None

    # ---- the loop -------------------------------------------------------------------------------------------
    def fit(self) -> LMState:
        """Train until --max-steps (or --epochs) or the time budget runs out; checkpoint every --save-every min.
        Ctrl-C (or SIGTERM) stops after the current step with a checkpoint (`interrupt.StopRequests`)."""
        with StopRequests("txl pretrain") as stop:
            return self._fit(stop)

    def _fit(self, stop: StopRequests) -> LMState:
        r, st = self.recipe, self.state
        started = last_save = time.time()
        before = st.seconds
        bar = tqdm(total=self.total, initial=st.step, unit="step", dynamic_ncols=True,
                   mininterval=2 if sys.stderr.isatty() else 60)  # a log file gets a line a minute
        while st.step < self.total and not st.stopped:
            elapsed = before + time.time() - started
            if r.max_minutes is not None and elapsed > 60 * r.max_minutes:
                st.stopped = f"time budget of {r.max_minutes} min reached"
                break
            t0 = time.time()
            loss = self.step(elapsed)
            st.step += 1
            st.loss = loss if math.isnan(st.loss) else 0.98 * st.loss + 0.02 * loss
            st.seconds = before + time.time() - started
            bar.set_postfix(loss=f"{st.loss:.3f}", ppl=f"{math.exp(min(st.loss, 50)):.1f}",
                            tok_s=f"{self.data.size(0) * self.segment_len / (time.time() - t0):,.0f}",
                            left=self._time_left(st.seconds))
            bar.update(1)
            if time.time() - last_save >= 60 * r.save_every or (stop.requested and st.step < self.total):
                self.save_checkpoint()
                last_save = time.time()
                if stop.requested and st.step < self.total:
                    bar.close()
                    raise stop.stopped(st.step, self.total, self.out)
        bar.close()
        st.seconds = before + time.time() - started
        self.save_checkpoint()
        return st

    def _time_left(self, seconds: float) -> str:
        left = seconds / max(1, self.state.step) * (self.total - self.state.step)
        if self.recipe.max_minutes is not None:
            left = min(left, max(0.0, 60 * self.recipe.max_minutes - seconds))
        return minutes_text(left)
