"""GPU speed and memory: training and inference tokens/s, and peak GPU memory against document length, for the
classifier-sized model and a `transfo-xl-wt103`-sized one; writes its table into benchmarks/RESULTS.md
(between the gpu markers) and every number into benchmarks/gpu_bench.json.

    python -m benchmarks.gpu_bench                         # on a GPU: bf16 autocast, as `txl` runs there
    python -m benchmarks.gpu_bench --device cpu --quick    # a smoke test of this script; numbers mean nothing

Both models are `TXLDocumentClassifier`s with random weights (speed does not depend on them): the
classifier-sized one is the `txl bench` shape (d_model 256, 8 heads of 32, d_inner 1024, 6 layers, segment
256, memory 256, vocabulary 32,000); the wt103-sized one has the reference's `transfo-xl-wt103` encoder
(d_model 1024, 16 heads of 64, d_inner 4096, 18 layers, memory 1,600, segments of 128, adaptive embedding with
cutoffs 20k/40k/200k of 267,735 words, div_val 4), what `txl train --init transfo-xl-wt103` fine-tunes.
Training is the step `txl train` takes: `backward_document` (two passes, constant memory) and AdamW.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from txl_core import TXLConfig
from txl_core.classifier import TXLDocumentClassifier
from txl_core.recompute import backward_document

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- gpu:start -->", "<!-- gpu:end -->"
SHAPES = {
    "classifier": dict(vocab_size=32000, d_model=256, d_embed=256, n_head=8, d_head=32, d_inner=1024, n_layer=6,
                       cutoffs=[], div_val=1, mem_len=256, clamp_len=512, same_length=False, segment_len=256),
    "wt103": dict(segment_len=128),  # TXLConfig's defaults are the transfo-xl-wt103 shape
}
TINY = dict(vocab_size=500, d_model=32, d_embed=32, n_head=2, d_head=16, d_inner=64, n_layer=2, cutoffs=[],
            div_val=1, mem_len=32, clamp_len=64, segment_len=32)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Throughput: documents of `doc_tokens` in batches of `batch[model]`; memory: batch 1, `mem_docs` tokens."""

    shapes: dict
    batch: dict
    doc_tokens: int
    mem_docs: tuple[int, ...]
    repeats: int


FULL = Plan(SHAPES, {"classifier": 8, "wt103": 2}, 4096, (1024, 4096, 16384, 65536), 3)
QUICK = Plan({"classifier": TINY, "wt103": TINY | dict(cutoffs=[100, 200], div_val=2)},
             {"classifier": 2, "wt103": 1}, 128, (64, 256), 1)


def build(shape: dict, device: torch.device) -> TXLDocumentClassifier:
    torch.manual_seed(0)
    return TXLDocumentClassifier(TXLConfig(**shape, num_labels=20)).to(device)


def _docs(cfg: TXLConfig, batch: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, cfg.vocab_size, (batch, n), generator=torch.Generator().manual_seed(n + batch))
    return ids.to(device), torch.full((batch,), n, device=device)  # (B, N), (B,)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device):
    """bf16 autocast on a GPU (what `--precision auto` does there); the CPU check runs float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def infer(model, ids, lengths) -> None:
    model.eval()
    with torch.inference_mode(), _autocast(ids.device):
        model(ids, lengths)


def train_step(model, opt, ids, lengths) -> None:
    model.train()
    opt.zero_grad(set_to_none=True)
    y = torch.zeros(ids.size(0), dtype=torch.long, device=ids.device)
    with _autocast(ids.device):
        backward_document(model, ids, lengths, lambda logits: torch.nn.functional.cross_entropy(logits.float(), y))
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def timed(fn, device: torch.device, *, tokens: int, repeats: int, warm_up: bool = True) -> dict:
    """Best of `repeats` runs (after one warm-up run); peak memory allocated by torch during the timed runs."""
    if warm_up:
        fn()
        _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"tokens": tokens, "seconds": best, "tokens_per_s": tokens / best, "peak_mb": peak}


def measure(plan: Plan, name: str, device: torch.device) -> dict:
    """Throughput of both runs at the plan's batch, then peak memory of both against document length."""
    model = build(plan.shapes[name], device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cfg, batch = model.config, plan.batch[name]
    ids, lengths = _docs(cfg, batch, plan.doc_tokens, device)
    out = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "batch": batch,
           "doc_tokens": plan.doc_tokens, "segment_len": cfg.segment_len, "mem_len": cfg.mem_len,
           "infer": timed(lambda: infer(model, ids, lengths), device, tokens=ids.numel(), repeats=plan.repeats),
           "train": timed(lambda: train_step(model, opt, ids, lengths), device, tokens=ids.numel(),
                          repeats=plan.repeats), "memory": []}
    for n in plan.mem_docs:  # the kernels are warm by now: one run each
        ids, lengths = _docs(cfg, 1, n, device)
        out["memory"].append({
            "doc_tokens": n,
            "infer": timed(lambda: infer(model, ids, lengths), device, tokens=n, repeats=1, warm_up=False),
            "train": timed(lambda: train_step(model, opt, ids, lengths), device, tokens=n, repeats=1, warm_up=False)})
    return out


def run(plan: Plan, device: torch.device) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": gpu, "torch": torch.__version__,
           "quick": plan is QUICK, "precision": "bf16 autocast" if device.type == "cuda" else "float32",
           "load_start": os.getloadavg()[0], "models": {}}
    for name in plan.shapes:
        res["models"][name] = measure(plan, name, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def _mb(x) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def render(res: dict) -> str:
    lines = [("**Quick mode: tiny sizes, the numbers mean nothing.** " if res["quick"] else "")
             + f"Measured {res['date']} on {res['device']}, torch {res['torch']}, {res['precision']}.", "",
             "| model | parameters | batch x tokens | segment / memory | train tokens/s | inference tokens/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, m in res["models"].items():
        lines.append(f"| {name} | {m['params_m']:.1f}M | {m['batch']} x {m['doc_tokens']:,} | {m['segment_len']} / "
                     f"{m['mem_len']} | {m['train']['tokens_per_s']:,.0f} | {m['infer']['tokens_per_s']:,.0f} |")
    lines += ["", "Peak GPU memory (MB allocated by torch, batch 1) against document length:", "",
              "| model | document tokens | inference | training step |", "|---|---:|---:|---:|"]
    for name, m in res["models"].items():
        lines += [f"| {name} | {r['doc_tokens']:,} | {_mb(r['infer']['peak_mb'])} | {_mb(r['train']['peak_mb'])} |"
                  for r in m["memory"]]
    return "\n".join(lines)


def write_section(path: Path, table: str) -> None:
    """Replace the text between the gpu markers of `path` (appending a section when they are missing)."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{START}\n{table}\n{END}"
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + f"\n\n## GPU (benchmarks/gpu_bench.py)\n\n{block}\n"
    path.write_text(text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (cpu: only to check the script runs)")
    p.add_argument("--quick", action="store_true", help="tiny models and documents: seconds")
    p.add_argument("--out-md", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    p.add_argument("--out-json", default=str(ROOT / "benchmarks" / "gpu_bench.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no GPU here; `--device cpu --quick` checks that the script runs")
    res = run(QUICK if args.quick else FULL, device)
    Path(args.out_json).write_text(json.dumps(res, indent=1) + "\n")
    write_section(Path(args.out_md), render(res))
    print(render(res))


if __name__ == "__main__":
    main()
