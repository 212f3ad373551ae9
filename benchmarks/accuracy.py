"""Test accuracy of `txl train` recipes next to `txl baseline` on the shared data sets.

    python -m benchmarks.accuracy --data ../shared/data --runs runs/accuracy [--datasets bbc_news r8] [--max-minutes 40]
        [--recipe minilm-lr3e-5-fresh1e-4 (txl train's default)|minilm|scratch|...]
    python -m benchmarks.accuracy --rows DIR/*.row.json    # add rows measured on a GPU (benchmarks.gpu_session)
    python -m benchmarks.accuracy ... --seed 1             # the same recipe from another seed (split, init, batches)
    python -m benchmarks.accuracy ... --refuse             # trained models fused again by today's `txl fuse`

For each data set: the TF-IDF + LinearSVC baseline, then `txl train` with the recipe (a time budget per data
set), then `txl evaluate` on the test split. Writes the table into benchmarks/RESULTS.md between
the `accuracy` markers and the raw figures into benchmarks/accuracy.json. Rerunnable; a data set whose model
directory already has test metrics is not retrained (delete it to retrain). With --refuse, a trained model is
fused again by `txl fuse` (the fusion method as it is now; the encoder unchanged) and evaluated again: a row of its
own where the fusion differs (the rows' key); accuracy.json keeps every row, the table each model's latest fusion.
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

import numpy as np

HERE = Path(__file__).resolve().parent
DATASETS = {  # name: (train file, test file), relative to the data folder; one file = a `split` column
    "bbc_news": ("bbc_news/bbc_news.csv.xz", "bbc_news/bbc_news.csv.xz"),
    "r8": ("reuters21578/r8.csv.xz", "reuters21578/r8.csv.xz"),
    "r52": ("reuters21578/r52.csv.xz", "reuters21578/r52.csv.xz"),  # never tuned on: the method's held-out check
    "20newsgroups": ("20newsgroups/train.csv.xz", "20newsgroups/test.csv.xz"),
    "imdb": ("imdb/train.csv.xz", "imdb/test.csv.xz"),
    "modapte90": ("reuters21578/modapte90_multilabel.csv.xz", "reuters21578/modapte90_multilabel.csv.xz"),
}
# Recipes: `txl train` flags. `minilm-lr3e-5-fresh1e-4` is `txl train`'s default (`--init auto` with the
# `minilm` extra), spelled out: fine-tuning the all-MiniLM-L6-v2 start in bf16 autocast on a CPU with bf16 units
# (float32 on others, where bf16 is a slow fallback), 2 epochs, bidirectional within a segment as BERT was
# trained, BERT's positions kept within each segment, peak rate 3e-5 for MiniLM's weights and 1e-4 for what it
# does not supply (the head, the relative-position projection and biases: `--fresh-lr`). `minilm`: every
# parameter at 1e-4; `minilm-1epoch`: that one for one epoch (a budget-bound run of a large data set);
# `minilm-lr3e-5`: every parameter at 3e-5. `txl train` fuses the n-gram component unless told otherwise
# (`--ngrams fuse`). `scratch`: random weights (`--init none`, the default model of d_model 128, 2 layers);
# `minilm-relative`: the MiniLM start with its positions folded into the token embeddings (`--positions
# relative`); `minilm-causal`: that one read causally as the paper does; `minilm-lr3e-5-fresh3e-4`: the default
# with a 3x larger rate for the head and relative-position terms; `minilm-lr3e-5-fresh1e-4-4epochs`: the default
# for 4 epochs (twice the steps, for small data sets).
MINILM = ["--init", "minilm", "--lr", "1e-4", "--epochs", "2", "--precision", "auto"]
RECIPES = {"minilm": [*MINILM, "--positions", "segment"], "scratch": ["--init", "none"],
           "minilm-1epoch": [*MINILM, "--positions", "segment", "--epochs", "1"],
           "minilm-relative": [*MINILM, "--positions", "relative"],
           "minilm-causal": [*MINILM, "--positions", "relative", "--attention", "causal"],
           "minilm-lr3e-5": [*MINILM, "--positions", "segment", "--lr", "3e-5"],  # argparse: the last --lr wins
           "minilm-lr3e-5-fresh1e-4": [*MINILM, "--positions", "segment", "--lr", "3e-5", "--fresh-lr", "1e-4"],
           "minilm-lr3e-5-fresh3e-4": [*MINILM, "--positions", "segment", "--lr", "3e-5", "--fresh-lr", "3e-4"],
           "minilm-lr3e-5-fresh1e-4-4epochs": [*MINILM, "--positions", "segment", "--lr", "3e-5", "--fresh-lr", "1e-4",
                                               "--epochs", "4"]}
DEFAULT = "minilm-lr3e-5-fresh1e-4"  # what `txl train --init auto` does with the minilm extra installed


def txl(*args: str) -> None:
    """Run `txl`; its progress and messages go to this script's console (or log): a run takes hours."""
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args])
    if done.returncode != 0:
        raise SystemExit(f"txl {args[0]} failed with exit code {done.returncode} (its message is above)")


def run_one(name: str, data: Path, runs: Path, max_minutes: float, recipe: str = "minilm",
            continue_later: bool = False, precision: str = "auto", seed: int = 0, refuse: bool = False) -> dict | None:
    train, test = (str(data / f) for f in DATASETS[name])
    tag = (name if recipe == "scratch" else f"{name}.{recipe}") + (f".seed{seed}" if seed else "")
    out, ev = runs / tag, runs / f"{tag}.eval"
    base = runs / f"{name}.baseline.json"
    if not base.is_file():
        txl("baseline", "--train", train, "--test", test, "--out", str(base))
    started = time.time()
    if refuse:
        if not (out / "metrics.json").is_file():
            print(f"{tag}: no trained model at {out} to fuse again; skipped")
            return None
        txl("fuse", "--model", str(out), "--train", train, "--seed", str(seed))
        txl("evaluate", "--model", str(out), "--data", test, "--out", str(ev), "--precision", precision)
    if not (ev / "metrics.json").is_file():
        txl("train", "--train", train, "--out", str(out), "--max-minutes", str(max_minutes), *RECIPES[recipe],
            "--seed", str(seed), *(["--resume"] if (out / "checkpoint").is_dir() else []))
        state = json.loads((out / "checkpoint" / "state.json").read_text())
        if continue_later and state["stopped"].startswith("time"):
            print(f"{tag}: stopped by the time budget in epoch {state['epoch'] + 1}, after {state['step']} steps "
                  f"and {state['seconds'] / 60:.0f} minutes; rerun with a larger --max-minutes to continue")
            return None
        txl("evaluate", "--model", str(out), "--data", test, "--out", str(ev), "--precision", precision)
    card = json.loads((out / "metrics.json").read_text())
    model = json.loads((ev / "metrics.json").read_text())
    baseline = json.loads(base.read_text())
    parts = model.get("components", {})
    return {"dataset": name, "recipe": recipe, "seed": seed, "cpu": cpu_kind(),
            "train_precision": card.get("training", {}).get("precision", ""),
            "accuracy": model["accuracy"], "macro_f1": model["macro_f1"],
            "micro_f1": model["micro_f1"], "ngrams": bool(parts), "precision": model.get("precision", "float32"),
            **{f"{part}_{k}": m[k] for part, m in parts.items() for k in ("accuracy", "micro_f1")},
            "baseline_accuracy": baseline["accuracy"],
            "baseline_macro_f1": baseline["macro_f1"], "baseline_micro_f1": baseline["micro_f1"],
            "train_minutes": card.get("training", {}).get("minutes", round((time.time() - started) / 60, 1)),
            "n_test": model["n_documents"], **run_facts(card)}


def run_facts(card: dict) -> dict:
    """What the training's own metrics say (steps, validation figures, fusion weights), kept in accuracy.json:
    the run folders are scratch and do not outlive a machine, the table's file does."""
    training = card.get("training", {})
    facts = {k: training[k] for k in ("steps", "planned_steps", "stopped") if k in training}
    for split in ("validation", "validation_encoder", "validation_ngram"):
        if "accuracy" in card.get(split, {}):
            facts[f"{split}_accuracy"] = card[split]["accuracy"]
    if "fusion" in card:
        facts["fusion"] = {k: v for k, v in card["fusion"].items() if k in ("a", "b", "c")}
        facts["ngrams_fit_on"] = card["fusion"].get("fit_on", "training split")  # or both splits: refit
        if "prior_ratio" in card["fusion"]:  # weights fit under the prior (pipelines/model/fusion.py)
            facts["fusion"]["prior_ratio"] = card["fusion"]["prior_ratio"]
        n, words = card["fusion"].get("n_terms"), card["fusion"].get("n_word_terms")
        if words is not None and words < n:  # character n-grams beside the words
            facts["ngram_terms"] = {"words": words, "chars": n - words}
    return facts


def key(row: dict) -> tuple:
    """A row's identity: data set, recipe, kind of machine (a GPU's row does not replace a CPU's, nor a bf16
    CPU's an AVX2-only one's), n-gram fusion, then seed (`key(row)[:4]` groups a recipe's seeds)."""
    return row["dataset"], row.get("recipe", "scratch"), str(row.get("cpu", "")), fused(row), row.get("seed", 0)


def fused(row: dict) -> str:
    """The table's "n-grams fused": no; yes (fit on the training split); yes, refit (on the training and
    validation splits: `fuse_ngrams(refit=True)`); ..., prior (weights under the prior of
    `pipelines.model.fusion.fit_fusion`); ..., chars (character 2-5-grams beside the word n-grams)."""
    if not row.get("ngrams", False):
        return "no"
    said = "yes" if row.get("ngrams_fit_on", "training split") == "training split" else "yes, refit"
    return said + (", prior" if "prior_ratio" in row.get("fusion", {}) else "") + \
        (", chars" if "ngram_terms" in row else "")


def latest_fusions(rows: list[dict]) -> list[dict]:
    """Each trained model's row (data set, recipe, machine, seed) of its latest fusion: the one with the most
    fusion features ("no" < "yes" < "yes, refit" < ... , prior < ..., chars), as each became `txl fuse`'s method."""
    rank = lambda r: (fused(r) != "no") + fused(r).count(",")  # noqa: E731
    model = lambda r: key(r)[:3] + key(r)[4:]  # noqa: E731
    best: dict[tuple, dict] = {}
    for r in rows:
        if model(r) not in best or rank(r) > rank(best[model(r)]):
            best[model(r)] = r
    return [r for r in rows if best[model(r)] is r]


def cpu_kind() -> str:
    """What decides this machine's speed: bf16 units or not (the rows' training minutes depend on it)."""
    from pipelines.runtime.device import cpu_has_native_bf16
    return "AVX512-BF16" if cpu_has_native_bf16() else "no bf16 units"


def table(rows: list[dict], machine: str) -> str:
    rows = latest_fusions(rows)
    lines = [f"Machine: {machine}. Command: `python -m benchmarks.accuracy --data ../shared/data --runs "
             "runs/accuracy`.",
             "", "| data set | recipe | n-grams fused | test docs | txl accuracy | txl macro-F1 | txl micro-F1 "
             "| encoder alone (acc / micro-F1) | n-grams alone (acc / micro-F1) | baseline accuracy "
             "| baseline macro-F1 | baseline micro-F1 | train min | trained on (CPU, precision) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    pct = lambda r, k: f"{100 * r[k]:.2f}" if k in r else ""  # noqa: E731
    for r in rows:
        said = fused(r)
        alone = {part: f"{pct(r, part + '_accuracy')} / {pct(r, part + '_micro_f1')}" if said != "no" else "-"
                 for part in ("encoder", "ngram")}
        seed = f" (seed {r['seed']})" if r.get("seed") else ""
        lines.append(f"| {r['dataset']} | {r.get('recipe', 'scratch')}{seed} | {said} | {r['n_test']} | "
                     + " | ".join(pct(r, k) for k in ("accuracy", "macro_f1", "micro_f1")) + f" | {alone['encoder']} | "
                     + f"{alone['ngram']} | "
                     + " | ".join(pct(r, k) for k in ("baseline_accuracy", "baseline_macro_f1", "baseline_micro_f1"))
                     + f" | {r['train_minutes']} | {r.get('cpu', '?')}, {r.get('train_precision') or '?'} |")
    lines += ["", "n-grams fused: \"no\", the encoder alone; \"yes\", the n-gram part fit on the training split; "
              "\"yes, refit\", then fit again on the training and validation splits under the fusion weights; "
              "\", prior\", the fusion weights fit under the prior of `pipelines.model.fusion.fit_fusion`; "
              "\", chars\", character 2-5-grams beside the word 1-2-grams. `txl train`'s default is \"yes, refit, "
              "prior, chars\". A model fused again by `txl fuse` (`--refuse`, the encoder unchanged) shows its latest "
              "fusion here; benchmarks/accuracy.json keeps the earlier ones.", "",
              "Multi-label (modapte90): accuracy is subset accuracy (every label of a document right); micro-F1 "
              "is the usual figure. Single-label: micro-F1 equals accuracy. Every machine: 2 cores; \"AVX512-BF16\" "
              "is an AMD EPYC with bf16 matrix units, \"no bf16 units\" an AVX2-only EPYC (float32 about 135 GFLOP/s, "
              "bf16 a slow fallback).", *seed_summary(rows)]
    return "\n".join(lines)


def seed_summary(rows: list[dict]) -> list[str]:
    """One line per recipe measured from several seeds on one kind of machine: the mean, spread and range of
    its test figure (micro-F1: accuracy for single-label data), fused and encoder alone."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r)[:4], []).append(r)
    lines = [f"- {name}, {recipe}, {cpu}{'' if said == 'no' else ', n-grams fused' + said[3:]}: {len(runs)} seeds "
             f"({', '.join(str(r.get('seed', 0)) for r in runs)}); test micro-F1 {spread(runs, 'micro_f1')}, "
             f"encoder alone {spread(runs, 'encoder_micro_f1')}"
             for (name, recipe, cpu, said), runs in groups.items() if len({r.get("seed", 0) for r in runs}) > 1]
    return ["", "Seeds (`--seed`; the same recipe, machine and n-gram fit):", *lines] if lines else []


def spread(runs: list[dict], field: str) -> str:
    """'mean M, sd S (min A, max B)' of a figure over runs, in percent; '-' where no run has it."""
    v = np.array([100 * r[field] for r in runs if field in r])
    if not len(v):
        return "-"
    return f"mean {v.mean():.2f}" + (f", sd {v.std(ddof=1):.2f}" if len(v) > 1 else "") + \
        f" (min {v.min():.2f}, max {v.max():.2f})"


def write_section(text: str, start="<!-- accuracy:start -->", end="<!-- accuracy:end -->") -> None:
    path = HERE / "RESULTS.md"
    old = path.read_text() if path.is_file() else "# Results\n"
    block = f"{start}\n{text}\n{end}"
    if start in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n## Accuracy (benchmarks/accuracy.py)\n\n" + block + "\n"
    path.write_text(new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    p.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "accuracy")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--recipe", default=DEFAULT, choices=list(RECIPES),
                   help=f"the `txl train` flags (RECIPES; default {DEFAULT}, txl train's own)")
    p.add_argument("--max-minutes", type=float, default=40.0, help="training budget per data set")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bf16"],
                   help="of `txl evaluate` (auto: bf16 on a CPU with bf16 units and on a GPU, else float32)")
    p.add_argument("--continue-later", action="store_true",
                   help="leave a training stopped by its budget unevaluated, for a later run to resume (txl "
                   "train fits its learning-rate schedule to each budget given: a larger one stretches the schedule "
                   "and the rate rises again, a warm restart, not the uninterrupted recipe)")
    p.add_argument("--seed", type=int, default=0,
                   help="txl train's --seed (validation split, initialisation, batch order, dropout); a row per seed")
    p.add_argument("--refuse", action="store_true",
                   help="fuse each trained model again with `txl fuse` (the encoder unchanged) and evaluate it again")
    p.add_argument("--rows", nargs="+", type=Path, default=[],
                   help="only add these rows (JSON files written by benchmarks.gpu_session) and rewrite the table")
    args = p.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    saved = HERE / "accuracy.json"
    new = [json.loads(path.read_text()) for path in args.rows]  # measured elsewhere (benchmarks.gpu_session's row.json)
    for name in [] if args.rows else args.datasets:
        row = run_one(name, args.data, args.runs, args.max_minutes, args.recipe, args.continue_later, args.precision,
                      args.seed, args.refuse)
        if row is not None:
            new.append(row)
    # read only now: rows written while this ran (hours) stay; the ones measured now replace their own
    by_key = {key(r): r for r in json.loads(saved.read_text())["rows"]} if saved.is_file() else {}
    by_key.update((key(r), r) for r in new)
    order = lambda k: (list(DATASETS).index(k[0]), list(RECIPES).index(k[1]), k[2].startswith("GPU"),  # noqa: E731
                       k[3], k[2], k[4])
    rows = [by_key[k] for k in sorted(by_key, key=order)]
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
               f"{os.environ.get('OMP_NUM_THREADS', 'default')} (each row's CPU in its last column)")
    saved.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    write_section(table(rows, machine))
    print(table(rows, machine))


if __name__ == "__main__":
    main()
