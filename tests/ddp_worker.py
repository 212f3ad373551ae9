"""The work of tests/test_distributed.py, run in one process and in two under torchrun.

`python -m tests.ddp_worker OUT JOBS` runs the JOBS (JSON: a list of ["steps"] or ["txl", args...]) one after
the other in the same processes: a torchrun launch costs seconds of start-up, so the tests share one.

`run_steps(OUT)` writes OUT/rank<R>.safetensors: two `Trainer.step`s' losses and gradients, for a
single-label model with class weights and a multi-label model with attention pooling. Rank 0 builds its model
from seed 0 and any other rank from another seed, so equal gradients also prove that DDP gave every rank
rank 0's weights. The first batch (5 documents) splits 3 + 2, longer than two segments on rank 0 only (both
backward routes of `backward_document`); the second (1 document) leaves rank 1 nothing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipelines.cli import main as txl
from pipelines.model.model_dir import ModelDir
from pipelines.runtime import distributed as dist
from pipelines.training.recipe import Recipe
from pipelines.training.trainer import Trainer
from txl_core import TXLConfig
from txl_core.classifier import TXLDocumentClassifier

LENGTHS = [30, 5, 17, 9, 26, 40]
BATCHES = [[0, 1, 2, 3, 4], [5]]


def _trainer(out: Path, *, multi_label: bool, device: torch.device) -> Trainer:
    torch.manual_seed(0 if dist.is_main() else 1000 + dist.rank())
    config = TXLConfig(vocab_size=37, d_model=12, d_embed=12, n_head=2, d_head=6, d_inner=20, n_layer=2,
                       cutoffs=[], div_val=1, mem_len=5, clamp_len=13, same_length=False, segment_len=8,
                       num_labels=3, multi_label=multi_label, pooling="attention" if multi_label else "mean",
                       dropout=0.0, dropatt=0.0, classifier_dropout=0.0)
    gen = torch.Generator().manual_seed(7)  # the data is the same on every rank
    ids = [torch.randint(1, 37, (n,), generator=gen).tolist() for n in LENGTHS]
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 0]]) if multi_label \
        else torch.tensor([0, 1, 2, 2, 2, 1])
    md = ModelDir(TXLDocumentClassifier(config), None, ["a", "b", "c"])
    return Trainer(md, Recipe(batch_size=5, class_weights="none" if multi_label else "sqrt"), train_ids=ids,
                   train_y=y, valid_texts=[], valid_labels=[], out=out, device=device)


def run_steps(out: Path) -> None:
    """Take the two steps with both models and save what each rank saw."""
    record = {}
    with dist.session("cpu") as device:
        for kind in ("single", "multi"):
            trainer = _trainer(out, multi_label=kind == "multi", device=device)
            for k, batch in enumerate(BATCHES):
                record[f"{kind}.{k}.loss"] = torch.tensor(trainer.step(batch))
                for name, p in trainer.model.named_parameters():
                    record[f"{kind}.{k}.grad.{name}"] = torch.zeros(0) if p.grad is None else p.grad.detach().clone()
            for name, p in trainer.model.named_parameters():
                record[f"{kind}.weight.{name}"] = p.detach().clone()
        # ranks' clocks differ; the learning rate under a time budget follows the largest, on every rank
        record["clock"] = torch.tensor(dist.max_over_ranks(float(dist.rank())), dtype=torch.float64)
    out.mkdir(parents=True, exist_ok=True)
    save_file(record, str(out / f"rank{dist.rank()}.safetensors"))


def main(out: Path, jobs: list[list[str]]) -> None:
    with dist.session("cpu"):  # one process group for all the jobs
        for job in jobs:
            if job == ["steps"]:
                run_steps(out)
            elif txl(job[1:]) != 0:
                raise SystemExit(f"rank {dist.rank()}: {' '.join(job)} failed")


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
