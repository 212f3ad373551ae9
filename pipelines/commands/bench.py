"""Measure speed and memory on this machine; write the table into benchmarks/RESULTS.md and benchmarks/bench.json.

Sections (--sections, default all): throughput (encoder tokens/s reading 4k and 16k-token documents segment by
segment with memory, batch 1 and 8, float32 / bf16 / int8, achieved GFLOP/s against a matmul ceiling measured
in the same run), reference (the Hugging Face TransfoXLModel in .refenv with the same weights, float32, batch 1
and 8, next to txl_core's float32 and its fastest path),
memory (peak resident memory of inference on 4k / 64k / 1M tokens and of a training step on 2k / 8k / 32k,
each in a fresh process), e2e (classify documents/s and train tokens/s on a 20newsgroups sample), accuracy (the
bundled bbc_news model's test accuracy in float32 / bf16 / int8: the accuracy cost of each fast path). The full run
takes 16-18 minutes on 2 cores; --quick runs tiny sizes in seconds (a smoke test: its numbers mean nothing).
Like every command it lets OpenMP threads spin when the machine is idle as it starts and makes them sleep
otherwise (`pipelines/runtime/threads.py`); the reference runs under the same setting, and the table says which.
The measurements live in benchmarks/bench.py (a source checkout).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from pipelines.errors import UserError, bounded

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
HEADING = "## Performance (txl bench)"
SECTIONS = ("throughput", "reference", "memory", "e2e", "accuracy")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds: checks that the bench runs")
    p.add_argument("--model", help="model directory for the e2e section (default: a random-init classifier)")
    p.add_argument("--threads", type=bounded(int, at_least=1), help="torch threads (default: torch's choice, usually the cores)")
    p.add_argument("--refenv", default=str(ROOT / ".refenv"), help="venv holding transformers==4.37.2")
    p.add_argument("--out-md", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="its bench table is replaced")
    p.add_argument("--out-json", default=str(ROOT / "benchmarks" / "bench.json"), help="every number, as JSON")


def load_bench():
    """benchmarks/bench.py as a module: it is no package of the installed product, only of the checkout."""
    path = ROOT / "benchmarks" / "bench.py"
    if not path.is_file():
        raise UserError(f"txl bench needs a source checkout: {path} is missing")
    spec = importlib.util.spec_from_file_location("txl_bench", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look modules up there
    spec.loader.exec_module(module)
    return module


def run(args: argparse.Namespace) -> int:
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        raise UserError(f"--sections: unknown {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(SECTIONS)}")
    res = load_bench().run_bench(sections=sections, quick=args.quick, model=args.model, threads=args.threads,
                                 refenv=args.refenv)
    Path(args.out_json).write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(Path(args.out_md), render(res))
    print(render(res))
    return 0


def write_markdown(path: Path, table: str) -> None:
    """Replace the text between the bench markers (adding the heading and markers when they are missing)."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{START}\n{table}\n{END}"
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n{block}\n"
    path.write_text(text)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


def _n(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _load(x) -> str:
    return f"{x[0]:.1f}" if isinstance(x, (list, tuple)) else f"{x:.1f}"


def _policy(value: str) -> str:
    return "unset: threads spin, then sleep" if value == "default" else value


def render(res: dict) -> str:
    m, c = res["machine"], res["ceiling"]
    head = (f"Measured {res['date']} on {m['cpu']} ({m['cores']} cores, {m['isa']}, bf16 matmul units: "
            f"{'yes' if m['native_bf16'] else 'no'}), torch {m['torch']}, {m['threads']} threads (OMP_WAIT_POLICY "
            f"{_policy(m['omp_wait_policy'])}), glibc allocator "
            f"tuned: {'yes' if res['allocator_tuned'] else 'no'}, bf16 attention kernel (txl_core/fast/fused.py): "
            f"{'yes' if m.get('bf16_kernel') else 'not built'}; load average (1 min) {_load(res['load_start'])} at "
            f"the start, {_load(res['load_end'])} at the end. Matmul ceiling measured in this run: "
            f"{_n(c['float32'])} GFLOP/s float32, {_n(c['bf16'])} GFLOP/s bf16.")
    lines = [("**Quick mode: tiny sizes, the numbers mean nothing.** " if res["quick"] else "") + head]
    fastest = {}  # (document tokens, batch) -> (tokens/s, precision) of the fastest precision measured
    for r in res.get("throughput", {}).get("rows", []):
        key = (r["doc_tokens"], r["batch"])
        fastest[key] = max(fastest.get(key, (0.0, "")), (r["tokens_per_s"], r["precision"]))
    for name, fn in (("throughput", _throughput), ("reference", lambda r, m: _reference(r, fastest)),
                     ("memory", _memory), ("e2e", _e2e), ("accuracy", _accuracy)):
        if name in res:
            skipped = res[name].get("skipped")
            lines += ["", f"**{name}**"] + ([f"Skipped: {skipped}"] if skipped else fn(res[name], m))
    return "\n".join(lines)


def _throughput(t: dict, m: dict) -> list[str]:
    f32 = {(r["doc_tokens"], r["batch"]): r["tokens_per_s"] for r in t["rows"] if r["precision"] == "float32"}
    rows = [[r["precision"], f"{r['doc_tokens']:,}", r["batch"], _n(r["tokens_per_s"]), _n(r["gflops"]),
             f"{r['pct_of_ceiling']:.0f}%", f"{r['tokens_per_s'] / f32[r['doc_tokens'], r['batch']]:.2f}x",
             f"{r['tokens']:,}", _load(r["load"])] for r in t["rows"]]
    c = t["closeness"]
    notes = ["", f"Max |class probability - float32's| on {c['docs']} random documents of {c['doc_tokens']:,} "
             f"tokens: bf16 {c['bf16']:.2g}, int8 {c['int8']:.2g}. int8 is set against the float32 ceiling."]
    if not m["native_bf16"]:
        notes[-1] += (" Without bf16 units torch's bf16 GEMM is a slow fallback (the bf16 ceiling), while attention"
                      " and elementwise work keep float32 speed: hence bf16 rows above 100%.")
    return _table(["precision", "document tokens", "batch", "tokens/s", "GFLOP/s", "of ceiling", "vs float32",
                   "tokens read", "load"], rows) + notes


def _reference(r: dict, fastest: dict) -> list[str]:
    rows = []
    spread = lambda pairs: f" ({min(pairs):.2f}-{max(pairs):.2f})" if len(pairs) > 1 else ""  # noqa: E731
    for x in r["rows"]:
        b = x.get("batch", 1)
        if x.get("fast"):  # measured in the same rounds as the reference
            precision, f = max(x["fast"].items(), key=lambda item: item[1]["tokens_per_s"])
            rate, ratio = f["tokens_per_s"], f"{f['ratio']:.2f}x{spread(f['pair_ratios'])}"
        else:  # an older bench.json (no fast paths in these rounds): the fastest precision of the throughput table
            rate, precision = fastest.get((x["doc_tokens"], b), (None, ""))
            ratio = f"{rate / x['reference']:.2f}x" if rate else ""
        rows.append([f"{x['doc_tokens']:,}", b, _n(x["reference"]), _n(x["ours"]),
                     f"{x['ratio']:.2f}x{spread(x.get('pair_ratios', []))}",
                     f"{_n(rate)} ({precision})" if rate else "not measured", ratio,
                     f"{x['max_abs_diff']:.2g}", _load(x["load"])])
    same_rounds = all(x.get("fast") for x in r["rows"])
    return _table(["document tokens", "batch", "reference tokens/s (float32)", "txl_core float32",
                   "ratio (range over rounds)", "txl_core fastest path", "ratio (range over rounds)",
                   "max abs diff, first segment", "load"], rows) + [
        "", "The reference and txl_core are measured in alternated rounds with the same weights (the reference, "
        "then float32, " + ("bf16 and int8" if same_rounds else "") + "), each the median of its readings; a "
        "range is over the rounds' ratios. " + ("The fastest path is the faster of bf16 and int8 in those rounds."
                                                if same_rounds else "The fastest path is the fastest precision of "
                                                "the throughput table above, at the same size (same run).")]


def _memory(r: dict, m: dict) -> list[str]:
    rows = [[x["run"], f"{x['doc_tokens']:,}", f"{x['tokens']:,}", f"{x['seconds']:.1f}", _n(x["tokens_per_s"]),
             f"{x['baseline_mb']:,.0f}", f"{x['peak_mb']:,.0f}", _load(x["load"])] for x in r["rows"]]
    return _table(["run (batch 1)", "document tokens", "tokens read", "seconds", "tokens/s", "RSS before, MB",
                   "peak RSS, MB", "load"], rows) + ["", "Each run in a fresh process: resident memory once the model "
                                                      "and the document are built, and the process's peak (VmHWM)."]


def _e2e(r: dict, m: dict) -> list[str]:
    rows = [[x["what"], f"{_n(x['rate'])} {x['unit']}", x["detail"], _load(x["load"])] for x in r["rows"]]
    return _table(["run", "throughput", "detail", "load"], rows) + ["", f"Model: {r['model']}; data: {r['source']}."]


def _accuracy(r: dict, m: dict) -> list[str]:
    rows = [[x["precision"], f"{x['accuracy']:.1f}", f"{x['max_prob_diff']:.2g}", x["changed"], _n(x["docs_per_s"]),
             _load(x["load"])] for x in r["rows"]]
    return _table(["precision", "test accuracy", "max abs probability diff vs float32", "labels changed",
                   "documents/s", "load"], rows) + ["", f"Model: `{r['model']}`; data: the {r['docs']} documents of "
                                                      "the bbc_news test split, classified as `txl classify` does."]
