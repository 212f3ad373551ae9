"""The paper's central ablation at small scale on WikiText-2: does the recurrent memory lower perplexity?

    OMP_NUM_THREADS=1 python -m benchmarks.wikitext_ablation [--data ../shared/data/wikitext2] [--runs DIR]

Trains the same small language model twice with `txl pretrain`, for the same number of steps on the same
segments of the same BPE stream: once with memory (mem_len = segment_len) and once without (mem_len 0). Then
measures test perplexity with `txl pretrain --eval-only`: both models as trained, and the memory model as its
evaluation memory grows (Dai et al. 2019, section 4.3 / table 9). Writes benchmarks/wikitext_ablation.json
and the table between the `wikitext-ablation` markers of benchmarks/RESULTS.md. Rerunnable: a finished run is
not retrained, an interrupted one resumes. Skips (exit 0) when the data is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.accuracy import write_section

HERE = Path(__file__).resolve().parent
FILES = {split: f"wiki.{split}.tokens.xz" for split in ("train", "valid", "test")}
SEGMENT = 64
# About 10 minutes per run on one contended core: a quarter of an epoch, so dropout would only slow learning.
RECIPE = ["--vocab-size", "8000", "--d-model", "256", "--n-layer", "4", "--n-head", "4", "--d-inner", "1024",
          "--segment-len", str(SEGMENT), "--batch-size", "16", "--lr", "1e-3", "--warmup", "50", "--dropout", "0",
          "--max-steps", "500", "--save-every", "5", "--seed", "0"]
EVAL_MEMS = [0, 64, 128, 256, 512]
START, END = "<!-- wikitext-ablation:start -->", "<!-- wikitext-ablation:end -->"


def txl(*args: str, capture: bool = False) -> str:
    """Run `txl`; progress goes to this script's stderr (the log)."""
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], text=True,
                          stdout=subprocess.PIPE if capture else None, cwd=HERE.parent)
    if done.returncode != 0:
        raise SystemExit(f"txl {' '.join(args[:2])} failed with exit code {done.returncode}")
    return done.stdout or ""


def train(out: Path, data: Path, mem_len: int, tokenizer: Path | None) -> dict:
    if not (out / "metrics.json").is_file():
        resume = ["--resume"] if (out / "checkpoint" / "state.json").is_file() else []
        txl("pretrain", "--text", str(data / FILES["train"]), "--out", str(out), "--mem-len", str(mem_len),
            *RECIPE, *(["--tokenizer", str(tokenizer)] if tokenizer else []), *resume)
    return json.loads((out / "metrics.json").read_text())


def measure(model: Path, text: Path, mem_len: int) -> dict:
    line = txl("pretrain", "--eval-only", "--init", str(model), "--text", str(text), "--eval-mem-len",
               str(mem_len), capture=True).strip().splitlines()[-1]
    print(f"  {model.name} evaluation memory {mem_len}: {line}", file=sys.stderr, flush=True)
    return json.loads(line)


def table(result: dict) -> str:
    rows = result["rows"]
    lines = [f"Machine: {result['machine']}. Command: `OMP_NUM_THREADS=1 python -m benchmarks.wikitext_ablation` "
             f"({result['minutes']:.0f} min in all). Recipe: `txl pretrain {' '.join(RECIPE)}` with `--mem-len "
             f"{SEGMENT}` or `--mem-len 0`: {result['params']:,} parameters, byte-level BPE of {result['vocab']:,} "
             f"tokens trained on wiki.train, {result['train_tokens_seen']:,} training tokens "
             f"({result['epochs_seen']:.2f} epochs) per model; training minutes: memory "
             f"{result['train_minutes']['mem']}, none {result['train_minutes']['nomem']}.", "",
             "Perplexity on wiki.test is per BPE token (the paper's WikiText figures are per word); the word-level "
             "column is exp(total NLL / words), counting whitespace words plus one `<eos>` per line as the paper's "
             f"vocabulary does (the test stream: {rows[0]['tokens']:,} tokens, {rows[0]['words']:,} words). "
             f"Memory beyond the training distance ({SEGMENT} + memory) reads with the longest trained distance "
             "(clamp_len, as the paper's evaluation does beyond its own).", "",
             "| model (training memory) | evaluation memory | test ppl (token) | test ppl (word) |",
             "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mem_len']} | {r['ppl']:.2f} | {r['word_ppl']:.2f} |")
    return "\n".join(lines)


def _section(text: str) -> None:
    path = HERE / "RESULTS.md"
    if START not in path.read_text():  # first run: a heading and empty markers for write_section to fill
        path.write_text(path.read_text().rstrip() + "\n\n## Memory ablation on WikiText-2 "
                        f"(benchmarks/wikitext_ablation.py)\n\n{START}\n{END}\n")
    write_section(text, start=START, end=END)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "wikitext2")
    p.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "wikitext_ablation")
    args = p.parse_args()
    if not all((args.data / f).is_file() for f in FILES.values()):
        print(f"skipped: WikiText-2 not found in {args.data}", file=sys.stderr)
        return 0
    started = time.time()
    mem, nomem = args.runs / f"mem{SEGMENT}", args.runs / "mem0"
    trained = {"mem": train(mem, args.data, SEGMENT, None),
               "nomem": train(nomem, args.data, 0, mem / "tokenizer.json")}
    test = args.data / FILES["test"]
    rows = [measure(nomem, test, 0) | {"model": "no memory (0)"}]
    rows += [measure(mem, test, m) | {"model": f"memory ({SEGMENT})"} for m in EVAL_MEMS]
    config = json.loads((mem / "config.json").read_text())
    import torch
    result = {"machine": f"{_cpu()}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}, OMP_NUM_THREADS="
                         f"{os.environ.get('OMP_NUM_THREADS', 'default')}, shared with other jobs (contended)",
              "recipe": RECIPE, "segment_len": SEGMENT, "vocab": config["vocab_size"], "params": trained["mem"]["params"],
              "train_tokens_seen": trained["mem"]["train_tokens_seen"],
              "epochs_seen": trained["mem"]["train_tokens_seen"] / trained["mem"]["train_tokens"],
              "train_minutes": {k: v["minutes"] for k, v in trained.items()}, "trained": trained, "rows": rows,
              "minutes": (time.time() - started) / 60, "memory_model_dir": str(mem)}
    (HERE / "wikitext_ablation.json").write_text(json.dumps(result, indent=1) + "\n")
    _section(table(result))
    print(table(result))
    return 0


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
