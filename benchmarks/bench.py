"""Speed and memory of txl_core on the machine it runs on: the measurements behind `txl bench`.

    txl bench [--quick] [--sections throughput,reference,...]

`python -m benchmarks.bench ARGS` runs `txl bench ARGS` too, but with torch loaded before the command could choose
how OpenMP threads wait (pipelines/runtime/threads.py): they wait as the environment says.

Sections: `throughput` (encoder tokens/s reading documents segment by segment with memory; float32, bf16 as
the product runs it (bf16 weights under autocast), int8 (dynamic quantization of the Linear layers); GFLOP/s
against a matmul ceiling measured in the same run), `reference` (Hugging Face TransfoXLModel in .refenv, same
weights, at each batch size), `memory` (peak RSS, each run in a fresh process), `e2e` (`predict` documents/s,
`Trainer.step` tokens/s), `accuracy` (the bundled bbc_news model's test accuracy in each precision).
A reading stops after `budget` seconds: once the memory is full every segment costs the same, so tokens/s
over the segments read stands for the whole document; the tables say how many tokens were read.

FLOPs per token (`flops_per_token`): a multiply-add counts 2, and everything computed counts, masked keys
included. One layer, a segment of T tokens reading M memory, K = M + T, C = d_model, A = n_head * d_head,
F = d_inner, B rows:
    q, k and v on the T rows                    6 T C A  (the memory rows' k and v are kept from the segment
                                                         that made them; int8 projects them again: + 4 M C A)
    r_net on the K positions                    0 (computed once per segment shape, then cached in inference)
    ac, bd, probs @ v                           2 T K A + 2 T (K+1) A + 2 T K A
    o_net, feed-forward                         2 T A C + 4 T C F
summed over the layers and divided by T: 2 x (non-embedding parameters but r_net) per token plus the
attention terms. Embedding lookups, layer norms, softmax and pooling are left out.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from txl_core import TXLConfig, TXLModel, reference_mems
from txl_core.classifier import TXLDocumentClassifier
from txl_core.fast import fused
from txl_core.recompute import backward_document

ROOT = Path(__file__).resolve().parents[1]
NEWSGROUPS = ROOT.parent / "shared" / "data" / "20newsgroups" / "test.csv.xz"
SECTIONS = ("throughput", "reference", "memory", "e2e", "accuracy")
BBC = ROOT.parent / "shared" / "data" / "bbc_news" / "bbc_news.csv.xz"
BUNDLED = ROOT / "app" / "models" / "bbc_news"
PRECISIONS = ("float32", "bf16", "int8")
# Children get the allocator setting pipelines.runtime.memory.tune_cpu_allocator gives this process.
CHILD_ENV = {"PYTHONPATH": str(ROOT), "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes: document lengths and batches of `throughput`, document lengths of the inference and training
    `memory` runs, end-to-end sample size and tokenizer vocabulary, seconds per reading (30x for a memory
    run), matmul size of the ceiling, alternating readings of ours and the reference per cell (medians)."""

    model: dict
    doc_lens: tuple[int, ...]
    batches: tuple[int, ...]
    infer_mem: tuple[int, ...]
    train_mem: tuple[int, ...]
    n_docs: int
    vocab: int
    budget: float
    ceiling_n: int
    repeats: int = 1


CLASSIFIER = dict(vocab_size=32000, d_model=256, d_embed=256, n_head=8, d_head=32, d_inner=1024, n_layer=6,
                  cutoffs=[], div_val=1, mem_len=256, clamp_len=512, same_length=False, segment_len=256,
                  num_labels=20)
FULL = Plan(CLASSIFIER, (4096, 16384), (1, 8), (4096, 65536, 1 << 20), (2048, 8192, 32768), 200, 32000, 20.0, 2048, 3)
QUICK = Plan(CLASSIFIER | dict(vocab_size=500, d_model=32, d_embed=32, n_head=2, d_head=16, d_inner=64, n_layer=2,
                               mem_len=32, clamp_len=64, segment_len=32, num_labels=3),
             (128, 256), (1, 2), (256, 1024), (256,), 6, 300, 0.5, 128)


def flops_per_token(cfg: TXLConfig, *, kept_kv: bool = True) -> float:
    """Encoder FLOPs per token once the memory is full (the formula is in the module docstring); `kept_kv`
    False: the memory rows' keys and values are projected again (int8)."""
    t, m, c, a, f = cfg.segment_len, cfg.mem_len, cfg.d_model, cfg.n_head * cfg.d_head, cfg.d_inner
    k = m + t
    per_row = (6 * t * c * a + (0 if kept_kv else 4 * m * c * a) + 4 * t * k * a + 2 * t * (k + 1) * a
               + 2 * t * a * c + 4 * t * c * f)
    return cfg.n_layer * per_row / t


def matmul_ceiling(dtype: torch.dtype, n: int, *, seconds: float = 1.0) -> float:
    """GFLOP/s of a square torch.matmul of size n, repeated for about `seconds` (at least twice)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    reps, start = 0, time.perf_counter()
    while reps < 2 or time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def _ids(cfg: TXLConfig, batch: int, n: int) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (batch, n), generator=torch.Generator().manual_seed(n + batch))


def _rate(tokens: int, start: float) -> dict:
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "load": os.getloadavg()[0]}


def read(model, ids: torch.Tensor, *, seg: int, budget: float) -> dict:
    """Read ids (B, N) segment by segment, each with the memory the last returned; stop after `budget` s.
    TXLModel and the reference's TransfoXLModel alike take `mems=` and return `.mems`."""
    mems, tokens, start = None, 0, time.perf_counter()
    for s in range(0, ids.size(1), seg):
        mems = model(ids[:, s:s + seg], mems=mems).mems
        tokens += ids[:, s:s + seg].numel()
        if time.perf_counter() - start > budget:
            break
    return _rate(tokens, start)


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def _int8(module: torch.nn.Module) -> torch.nn.Module:
    return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)


def _fast_path(encoder: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The encoder as `pipelines.model.inference.prepare` runs it on a CPU: bf16 weights under autocast, or int8."""
    from pipelines.model.inference import to_bf16
    return {"int8": _int8, "bf16": to_bf16}.get(precision, lambda m: m)(encoder)


def encoder_rate(model, ids, *, precision: str, budget: float) -> dict:
    with torch.inference_mode(), _autocast(precision):
        model(ids[:, :model.config.segment_len])  # warm-up: first allocations, kernel choices
        return read(model, ids, seg=model.config.segment_len, budget=budget)


def closeness(cfg: TXLConfig) -> dict:
    """Max |class probability - float32's| of bf16 and int8 on 4 random documents of 4 segments. The random
    head is rescaled so that the logits spread (std 2); otherwise every probability is near 1/L."""
    torch.manual_seed(1)
    model, ids = TXLDocumentClassifier(cfg).eval(), _ids(cfg, 4, 4 * cfg.segment_len)
    with torch.inference_mode():
        model.head.weight.mul_(2 / model(ids).logits.std())
        ref = model(ids).logits.softmax(-1)
        encoder = model.transformer
        model.transformer = _fast_path(copy.deepcopy(encoder), "bf16")
        with _autocast("bf16"):
            bf16 = model(ids).logits.float().softmax(-1)
        model.transformer = _int8(encoder)
        int8 = model(ids).logits.softmax(-1)
    return {"bf16": float((bf16 - ref).abs().max()), "int8": float((int8 - ref).abs().max()), "docs": 4,
            "doc_tokens": ids.size(1)}


def section_throughput(plan: Plan, ceiling: dict) -> dict:
    cfg, rows = TXLConfig(**plan.model), []
    for precision in PRECISIONS:
        torch.manual_seed(0)
        model = _fast_path(TXLModel(cfg).eval(), precision)
        for n in plan.doc_lens:
            for b in plan.batches:
                r = encoder_rate(model, _ids(cfg, b, n), precision=precision, budget=plan.budget)
                gflops = r["tokens_per_s"] * flops_per_token(cfg, kept_kv=precision != "int8") / 1e9
                rows.append(dict(precision=precision, doc_tokens=n, batch=b, **r, gflops=gflops,
                                 pct_of_ceiling=100 * gflops / ceiling["bf16" if precision == "bf16" else "float32"]))
    return {"rows": rows, "closeness": closeness(cfg)}


def _child(python: str | Path, *args) -> dict:
    """Run this module's worker in a fresh process (same thread count); it prints one JSON line."""
    env = os.environ | CHILD_ENV | {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    out = subprocess.run([str(python), "-m", "benchmarks.bench", *map(str, args)], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        raise RuntimeError(f"bench worker {args[0]} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(readings: list[dict]) -> float:
    return sorted(r["tokens_per_s"] for r in readings)[len(readings) // 2]


def section_reference(plan: Plan, refenv: Path) -> dict:
    """TransfoXLModel's reading against ours at each batch size, same weights, one after the other: float32,
    and the fast paths (bf16, int8) in the same rounds, so that each ratio is measured side by side."""
    if not (refenv / "bin" / "python").exists():
        return {"skipped": f"no reference venv at {refenv} (create it: bash benchmarks/reference_env.sh)"}
    cfg = TXLConfig(**plan.model)
    torch.manual_seed(0)
    model, rows = TXLModel(cfg).eval(), []
    fast = {p: _fast_path(copy.deepcopy(model), p) for p in PRECISIONS if p != "float32"}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # our names are HF's `transformer.*` minus the prefix: TransfoXLModel's own
        for n in plan.doc_lens:
            for b in plan.batches:
                ids = _ids(cfg, b, n)
                torch.save(ids, Path(tmp, "ids.pt"))
                refs, ours, fast_reads = [], [], {p: [] for p in fast}
                for _ in range(plan.repeats):  # alternated, so that a slow spell of the host hits all alike
                    refs.append(_child(refenv / "bin" / "python", "reference", tmp, plan.budget))
                    ours.append(encoder_rate(model, ids, precision="float32", budget=plan.budget))
                    for p, m in fast.items():
                        fast_reads[p].append(encoder_rate(m, ids, precision=p, budget=plan.budget))
                ref, mine = _median(refs), _median(ours)
                with torch.inference_mode():  # the reference's first segment reads mem_len zero vectors
                    first = model(ids[:, :cfg.segment_len], mems=reference_mems(cfg, b)).last_hidden_state
                diff = (first - torch.load(Path(tmp, "first.pt"), weights_only=True)).abs().max()
                pairs = lambda xs: [o["tokens_per_s"] / r["tokens_per_s"] for o, r in zip(xs, refs)]  # noqa: E731
                rows.append(dict(doc_tokens=n, batch=b, ours=mine, reference=ref, ratio=mine / ref,
                                 pair_ratios=pairs(ours), reference_read=refs[0]["tokens"],
                                 fast={p: {"tokens_per_s": _median(x), "ratio": _median(x) / ref,
                                           "pair_ratios": pairs(x)} for p, x in fast_reads.items()},
                                 max_abs_diff=float(diff), load=ours[-1]["load"]))
    return {"rows": rows}


def reference_worker(directory: str, budget: float) -> dict:
    """In .refenv: TransfoXLModel reads ids.pt with its default memory; its first segment goes to first.pt."""
    import warnings
    warnings.simplefilter("ignore")
    from transformers import TransfoXLModel
    model = TransfoXLModel.from_pretrained(directory).eval()
    ids = torch.load(Path(directory, "ids.pt"), weights_only=True)
    seg = json.loads(Path(directory, "config.json").read_text())["segment_len"]
    with torch.inference_mode():
        torch.save(model(ids[:, :seg]).last_hidden_state, Path(directory, "first.pt"))  # also the warm-up
        return read(model, ids, seg=seg, budget=budget)


def _rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, MB. Not getrusage's ru_maxrss: after the vfork + exec that
    starts a subprocess, that one also holds the parent's peak."""
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.is_file() else []
    kib = next((int(x.split()[1]) for x in lines if x.startswith(field + ":")), None)
    return (kib or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def memory_worker(kind: str, n: int, budget: float, quick: bool) -> dict:
    """Peak RSS of reading one document of n tokens (`inference`), or of one training step on it (`train`:
    backward_document, which reads it whole, then AdamW)."""
    cfg = TXLConfig(**(QUICK if quick else FULL).model)
    torch.manual_seed(0)
    model, ids = TXLDocumentClassifier(cfg), _ids(cfg, 1, n)
    base, start = _rss_mb("VmRSS"), time.perf_counter()
    if kind == "inference":
        with torch.inference_mode():
            r = read(model.eval().transformer, ids, seg=cfg.segment_len, budget=budget)
    else:
        opt, target = torch.optim.AdamW(model.parameters()), torch.tensor([0])
        backward_document(model.train(), ids, torch.tensor([n]), lambda logits: F.cross_entropy(logits, target))
        opt.step()
        r = _rate(n, start)
    return r | {"baseline_mb": base, "peak_mb": _rss_mb("VmHWM")}


def section_memory(plan: Plan, quick: bool) -> dict:
    runs = [("inference", n) for n in plan.infer_mem] + [("train", n) for n in plan.train_mem]
    return {"rows": [{"run": kind, "doc_tokens": n, **_child(sys.executable, "memory", kind, n, plan.budget * 30,
                                                             int(quick))} for kind, n in runs]}


def _sample(plan: Plan, quick: bool) -> tuple[list[str], list[str]] | None:
    """`n_docs` texts of 20newsgroups' test split (None where absent); synthetic texts in quick mode."""
    if quick:
        rng, words = random.Random(0), "the model reads each segment of long documents with memory".split()
        return [" ".join(rng.choices(words, k=rng.randint(20, 300))) for _ in range(plan.n_docs)], ["a"] * plan.n_docs
    if not NEWSGROUPS.is_file():
        return None
    import pandas as pd
    frame = pd.read_csv(NEWSGROUPS, keep_default_na=False).sample(plan.n_docs, random_state=0)
    return frame["text"].tolist(), frame["label"].tolist()


def _model_dir(plan: Plan, texts: list[str], labels: list[str]):
    """A random-init classifier of the plan's size with a tokenizer trained on the sample: speed, not accuracy."""
    from pipelines.data.bpe_tokenizer import train_tokenizer
    from pipelines.model.model_dir import ModelDir
    tok, names = train_tokenizer(texts, vocab_size=plan.vocab), sorted(set(labels))
    config = TXLConfig(**plan.model | dict(vocab_size=tok.get_vocab_size(), num_labels=len(names), labels=names))
    torch.manual_seed(0)
    return ModelDir(TXLDocumentClassifier(config), tok, names)


def _classify_rate(md, texts: list[str], precision: str, n_tokens: int) -> dict:
    from pipelines.model.inference import predict, prepare
    ready = prepare(dataclasses.replace(md, model=copy.deepcopy(md.model)), precision=precision, device="cpu")
    start = time.perf_counter()
    predict(ready, texts)
    r = _rate(n_tokens, start)
    return {"what": f"classify {precision}", "rate": len(texts) / r["seconds"], "unit": "documents/s",
            "detail": f"{len(texts)} documents, {n_tokens:,} tokens, {r['tokens_per_s']:,.0f} tokens/s", **r}


def _train_rate(md, ids: list[list[int]], budget: float) -> dict:
    """`Trainer.step` on batches of 8 with arbitrary targets for about `budget` seconds."""
    from pipelines.training.recipe import Recipe, bucketed_batches
    from pipelines.training.trainer import Trainer
    n_labels = md.model.config.num_labels
    y = torch.zeros(len(ids), n_labels) if md.multi_label else torch.arange(len(ids)) % n_labels
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(md, Recipe(batch_size=8), train_ids=ids, train_y=y, valid_texts=[], valid_labels=[],
                          out=Path(tmp), device=torch.device("cpu"))
        tokens, start = 0, time.perf_counter()
        for batch in bucketed_batches([len(x) for x in ids], batch_size=8, seed=0):
            trainer.step(batch)
            tokens += sum(len(ids[i]) for i in batch)
            if time.perf_counter() - start > budget:
                break
    r = _rate(tokens, start)
    return {"what": "train float32", "rate": r["tokens_per_s"], "unit": "tokens/s",
            "detail": f"{tokens:,} tokens in {r['seconds']:.1f} s, batches of 8", **r}


def section_e2e(plan: Plan, quick: bool, model: str | None) -> dict:
    from pipelines.model.model_dir import load_model_dir
    sample = _sample(plan, quick)
    if sample is None:
        return {"skipped": f"{NEWSGROUPS} is absent"}
    texts, labels = sample
    md = load_model_dir(model) if model else _model_dir(plan, texts, labels)
    ids = [e.ids for e in md.tokenizer.encode_batch(texts, add_special_tokens=False)]
    rows = [_classify_rate(md, texts, p, sum(map(len, ids))) for p in PRECISIONS]
    return {"rows": rows + [_train_rate(md, [x for x in ids if x], plan.budget)],
            "model": model or f"random init, {md.tokenizer.get_vocab_size():,}-token tokenizer trained on the sample",
            "source": "synthetic texts" if quick else f"{plan.n_docs} random documents of {NEWSGROUPS.name}"}


def section_accuracy(quick: bool) -> dict:
    """The accuracy cost of each fast path: the bundled bbc_news model on the bbc_news test split (444
    documents) in float32, bf16 and int8, as `txl classify` runs them; quick mode: the first 20 documents."""
    if not BBC.is_file() or not (BUNDLED / "config.json").is_file():
        return {"skipped": f"{BBC} or {BUNDLED} is absent"}
    import pandas as pd

    from pipelines.model.inference import predict, prepare
    from pipelines.model.model_dir import load_model_dir
    frame = pd.read_csv(BBC, keep_default_na=False)
    frame = frame[frame["split"] == "test"].head(20 if quick else None)
    texts, labels, rows, ref = frame["text"].tolist(), frame["label"].tolist(), [], None
    for precision in PRECISIONS:
        md = prepare(load_model_dir(BUNDLED), precision=precision, device="cpu")
        start = time.perf_counter()
        preds = predict(md, texts)
        seconds = time.perf_counter() - start
        probs = torch.tensor([[p.probs[name] for name in md.labels] for p in preds])  # (N, L)
        ref = probs if ref is None else ref
        rows.append(dict(precision=precision, accuracy=100 * sum(p.label == y for p, y in zip(preds, labels)) / len(labels),
                         max_prob_diff=float((probs - ref).abs().max()), docs_per_s=len(texts) / seconds,
                         changed=int((probs.argmax(1) != ref.argmax(1)).sum()), load=os.getloadavg()[0]))
    return {"rows": rows, "docs": len(texts), "model": str(BUNDLED.relative_to(ROOT))}


def machine() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((x.split(":", 1)[1].strip() for x in info.splitlines() if x.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "bf16_kernel": fused.rel_attn_bf16() is not None}


def run_bench(*, sections=SECTIONS, quick: bool = False, model: str | None = None, threads: int | None = None,
              refenv: str | Path = ROOT / ".refenv") -> dict:
    """Measure the chosen sections; returns a JSON-able dict (pipelines/commands/bench.py renders the tables)."""
    from pipelines.runtime.memory import tune_cpu_allocator
    if threads:
        torch.set_num_threads(threads)
    plan = QUICK if quick else FULL
    res = {"quick": quick, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
           "allocator_tuned": tune_cpu_allocator(), "load_start": os.getloadavg()}
    res["ceiling"] = {"float32": matmul_ceiling(torch.float32, plan.ceiling_n),
                      "bf16": matmul_ceiling(torch.bfloat16, plan.ceiling_n // 2)}
    work = {"throughput": lambda: section_throughput(plan, res["ceiling"]),
            "reference": lambda: section_reference(plan, Path(refenv)),
            "memory": lambda: section_memory(plan, quick), "e2e": lambda: section_e2e(plan, quick, model),
            "accuracy": lambda: section_accuracy(quick)}
    for name in sections:
        res[name] = work[name]()
    res["load_end"] = os.getloadavg()
    return res


def main(argv: list[str]) -> int:
    """A worker (`reference DIR BUDGET` or `memory KIND TOKENS BUDGET QUICK`) prints its JSON line; anything
    else is `txl bench`'s command line."""
    if argv[:1] not in (["reference"], ["memory"]):
        from pipelines.cli import main as txl
        return txl(["bench", *argv])
    kind, *a = argv
    out = reference_worker(a[0], float(a[1])) if kind == "reference" else \
        memory_worker(a[0], int(a[1]), float(a[2]), bool(int(a[3])))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
