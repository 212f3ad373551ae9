"""Parity of txl_core against the Hugging Face reference goldens (transformers 4.37.2), without transformers.

Run with the PRODUCT venv, from the repository root:

    .venv/bin/python -m benchmarks.ref_parity                       # /work/refgold + shared/reference
    .venv/bin/python -m benchmarks.ref_parity DIR ... [--tol 1e-4] [--variants small_dproj ...] [--rss]

For every `golden_<variant>.npz` in the given directories, `ckpt_<variant>/` beside it is loaded with
`txl_core.load_pretrained`, and every segment is replayed in both memory modes:

* `hf`:    segment 0 reads `txl_core.reference_mems(config, bsz)` (HF's mem_len zero slots);
* `empty`: segment 0 reads `mems=None` (the original code's empty memory);

later segments read the mems our model returned for the previous one (batch-first; the goldens are time-major).
Compared: hidden_states, last_hidden_state, attn_sublayer_out (hooked), pos_emb and attn_mask (txl_core internals),
attentions, mems_in/mems_out, logprobs, losses (token order), loss, masked_losses/masked_loss, plus `fused_*`:
the logprobs/mems of a second pass without output_attentions/hidden_states (the scaled_dot_product path).
A checkpoint directory that also holds `pytorch_model.bin` is checked a second time through that file alone
(`<variant>[bin]`); `ckpt_<variant>_bin/` directories likewise.

Prints the max abs error per array, variant and mode; exits 1 if any exceeds --tol (default 1e-4) or a variant
fails to load/run. `--rss` also measures the peak RSS of `load_pretrained` on the wt103-shape checkpoints
(each in a fresh subprocess) relative to the weights' size.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

import txl_core

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DIRS = ["/work/refgold", str(ROOT.parent / "shared" / "reference")]


class Errors:
    """max abs error per (variant, mode, array) over segments, and whether it passes
    |ours - golden| <= atol + rtol * |golden| element-wise (numpy.allclose's rule)."""

    def __init__(self, atol: float, rtol: float):
        self.atol, self.rtol = atol, rtol
        self.rows: dict[tuple[str, str], dict[str, float]] = {}
        self.fails: dict[tuple[str, str], set[str]] = {}
        self.shape_problems: list[str] = []

    def add(self, variant, mode, name, ours, gold):
        ours = ours.detach().cpu().double().numpy() if torch.is_tensor(ours) else np.asarray(ours, dtype=np.float64)
        gold = np.asarray(gold).astype(np.float64)
        row = self.rows.setdefault((variant, mode), {})
        if ours.shape != gold.shape:
            self.shape_problems.append(f"{variant} {mode} {name}: ours {ours.shape} vs golden {gold.shape}")
            row[name] = float("inf")
            self.fails.setdefault((variant, mode), set()).add(name)
            return
        diff = np.abs(ours - gold)
        err = float(np.max(diff)) if gold.size else 0.0
        if not np.isfinite(ours).all() and np.isfinite(gold).all():
            err = float("inf")
        row[name] = max(row.get(name, 0.0), err)
        if err == float("inf") or (gold.size and np.any(diff > self.atol + self.rtol * np.abs(gold))):
            self.fails.setdefault((variant, mode), set()).add(name)


def t2(x):
    return torch.from_numpy(np.asarray(x))


def time_major(mems):
    """list of (B, M, C) -> array (L, M, B, C), the golden layout."""
    return torch.stack([m.transpose(0, 1) for m in mems])


class SubLayerHook:
    def __init__(self, model):
        self.out = {}
        self.handles = []
        layers = getattr(getattr(model, "transformer", None), "layers", [])
        for i, layer in enumerate(layers):
            attn = getattr(layer, "dec_attn", None)
            if attn is not None:
                self.handles.append(attn.register_forward_hook(self._hook(i)))

    def _hook(self, i):
        def hook(module, args, output):
            self.out[i] = (output[0] if isinstance(output, tuple) else output).detach().clone()
        return hook

    def stacked(self, n):
        return torch.stack([self.out[i] for i in range(n)]) if len(self.out) == n else None


def internals(model, cfg, qlen, mlen):
    """pos_emb (K, C) and mask (T, K) from txl_core's own functions, or None where the API is not there."""
    pos = mask = None
    try:
        pos = model.transformer.pos_emb(mlen + qlen, clamp_len=cfg.clamp_len)
    except Exception:
        pass
    try:
        from txl_core.attention import attention_mask
        mask = attention_mask(qlen=qlen, mlen=mlen, mem_len=cfg.mem_len, same_length=cfg.same_length)
    except Exception:
        pass
    return pos, mask


def check_variant(variant, golden_path, ckpt_dir, errs: Errors, label=None):
    label = label or variant
    z = np.load(golden_path)
    wt103 = "vocab_cols" in z.files
    t0 = time.time()
    model = txl_core.load_pretrained(ckpt_dir)
    t_load = time.time() - t0
    cfg = model.config
    n_layer = cfg.n_layer
    ids_all = t2(z["input_ids"]).long()
    n_seg, bsz, qlen = ids_all.shape
    hook = SubLayerHook(model)
    for mode in ("hf", "empty"):
        mems = txl_core.reference_mems(cfg, bsz) if mode == "hf" else None
        for s in range(n_seg):
            p = f"{mode}_seg{s}_"
            ids = ids_all[s]
            mlen = 0 if mems is None else mems[0].size(1)
            if p + "mems_in" in z.files and mems is not None:
                errs.add(label, mode, "mems_in", time_major(mems), z[p + "mems_in"])
            if p + "mems_in_tail" in z.files and mems is not None:
                errs.add(label, mode, "mems_in", time_major(mems)[:, -int(z["mem_tail_len"]):], z[p + "mems_in_tail"])
            hook.out.clear()
            with torch.no_grad():
                out = model(ids, mems=mems, labels=ids.clone(), output_hidden_states=True, output_attentions=True)
                fused = model(ids, mems=mems)
            hs = torch.stack(out.hidden_states)
            errs.add(label, mode, "hidden_states", hs, z[p + "hidden_states"])
            errs.add(label, mode, "last_hidden_state", hs[-1], z[p + "last_hidden_state"])
            sub = hook.stacked(n_layer)
            if sub is not None:
                errs.add(label, mode, "attn_sublayer_out", sub, z[p + "attn_sublayer_out"])
            pos, mask = internals(model, cfg, qlen, mlen)
            if pos is not None:
                errs.add(label, mode, "pos_emb", pos, z[p + "pos_emb"])
            if mask is not None:
                errs.add(label, mode, "attn_mask", mask.to(torch.float64), z[p + "attn_mask"].astype(np.float64))
            if wt103:
                sel = [int(i) for i in z["attention_layers"]]
                errs.add(label, mode, "attentions", torch.stack([out.attentions[i] for i in sel]),
                         z[p + "attentions_sel"])
                tail = int(z["mem_tail_len"])
                new = time_major(out.mems)
                errs.add(label, mode, "mems_out", new[:, -tail:], z[p + "mems_out_tail"])
                errs.add(label, mode, "mems_out_len", float(new.size(1)), float(z[p + "mems_out_len"]))
                errs.add(label, mode, "fused_mems_out", time_major(fused.mems)[:, -tail:], z[p + "mems_out_tail"])
                cols = t2(z["vocab_cols"]).long()
                rows = [int(r) for r in z["logprob_row_positions"]]
                errs.add(label, mode, "logprobs", out.logprobs[:, :, cols], z[p + "logprobs_cols"])
                errs.add(label, mode, "logprobs", out.logprobs[:, rows, :], z[p + "logprobs_rows"])
                errs.add(label, mode, "fused_logprobs", fused.logprobs[:, :, cols], z[p + "logprobs_cols"])
            else:
                errs.add(label, mode, "attentions", torch.stack(out.attentions), z[p + "attentions"])
                errs.add(label, mode, "mems_out", time_major(out.mems), z[p + "mems_out"])
                errs.add(label, mode, "fused_mems_out", time_major(fused.mems), z[p + "mems_out"])
                errs.add(label, mode, "logprobs", out.logprobs, z[p + "logprobs"])
                errs.add(label, mode, "fused_logprobs", fused.logprobs, z[p + "logprobs"])
            errs.add(label, mode, "losses", out.losses, z[p + "losses"])
            errs.add(label, mode, "loss", out.loss, z[p + "loss"])
            mems = out.mems
    if "masked_labels" in z.files:
        labels = t2(z["masked_labels"]).long()
        with torch.no_grad():
            out = model(ids_all[0], mems=txl_core.reference_mems(cfg, bsz), labels=labels.clone())
        errs.add(label, "hf", "masked_losses", out.losses, z["masked_losses"])
        errs.add(label, "hf", "masked_loss", out.loss, z["masked_loss"])
    del model
    return t_load, time.time() - t0


def bin_only_copy(ckpt_dir: Path, tmp: Path) -> Path:
    d = tmp / (ckpt_dir.name + "_binonly")
    d.mkdir()
    shutil.copy(ckpt_dir / "config.json", d / "config.json")
    os.symlink((ckpt_dir / "pytorch_model.bin").resolve(), d / "pytorch_model.bin")
    return d


RSS_CHILD = r"""
import resource, sys, time, torch
import txl_core  # from the checkout: PYTHONPATH

def status(key):  # VmHWM (peak RSS) / VmRSS of this process, in bytes; reset by exec, unlike ru_maxrss
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

base = status("VmHWM")
t = time.time()
m = txl_core.load_pretrained(sys.argv[1])
dt = time.time() - t
peak, now = status("VmHWM"), status("VmRSS")
seen, nbytes = set(), 0
with torch.no_grad():
    for p in list(m.parameters()) + list(m.buffers()):
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr()); nbytes += p.numel() * p.element_size()
            float(p.float().sum())  # fault every weight page in (lazily mapped files count only once read)
touched = status("VmHWM")
with torch.no_grad():
    m(torch.zeros(1, 128, dtype=torch.long))
fwd = status("VmHWM")
print(base, peak, now, touched, fwd, nbytes, dt)
"""


def measure_rss(ckpt_dirs):
    """Peak RSS of load_pretrained, each checkpoint in a fresh interpreter (VmHWM from /proc)."""
    mib = 2 ** 20
    print("\nPeak RSS of txl_core.load_pretrained (fresh interpreter each; VmHWM; 'base' = after importing torch "
          "and txl_core):")
    print(f"  {'checkpoint':<52} {'file MiB':>8} {'params MiB':>10} {'base':>6} {'peak':>6} {'after':>6} "
          f"{'touched':>7} {'+fwd':>6} {'load s':>6}")
    print("  ('peak' = max during load_pretrained, 'after' = RSS when it returned, 'touched' = peak after reading "
          "every weight once, '+fwd' = peak after one 128-token forward pass; MiB and x params)")
    for d in ckpt_dirs:
        files = [f for f in d.iterdir() if f.name in ("model.safetensors", "pytorch_model.bin")]
        fsize = sum(f.stat().st_size for f in files)
        r = subprocess.run([sys.executable, "-c", RSS_CHILD, str(d)], capture_output=True, text=True,
                           env=os.environ | {"PYTHONPATH": str(ROOT)})
        if r.returncode:
            print(f"  {d}: FAILED\n{r.stderr[-2000:]}")
            continue
        base, peak, now, touched, fwd, nbytes, dt = r.stdout.split()[-7:]
        base, peak, now, touched, fwd, nbytes = map(int, (base, peak, now, touched, fwd, nbytes))
        dt = float(dt)
        name = f"{d.name}/{files[0].name if files else '?'}"
        print(f"  {name:<52} {fsize / mib:8.0f} {nbytes / mib:10.0f} {base / mib:6.0f} {peak / mib:6.0f} "
              f"{now / mib:6.0f} {touched / mib:7.0f} {fwd / mib:6.0f} {dt:6.1f}")
        print(f"  {'':<52} {'':>8} {'x params:':>10} {base / nbytes:6.2f} {peak / nbytes:6.2f} {now / nbytes:6.2f} "
              f"{touched / nbytes:7.2f} {fwd / nbytes:6.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*", default=DEFAULT_DIRS)
    ap.add_argument("--tol", "--atol", dest="tol", type=float, default=1e-4, help="absolute tolerance (1e-4)")
    ap.add_argument("--rtol", type=float, default=1e-5,
                    help="relative tolerance on top of --tol, element-wise as numpy.allclose (default 1e-5: float32 "
                         "log-probs of magnitude ~100, as in wt103shape, carry ~1e-4 of rounding in the golden "
                         "itself); --rtol 0 = pure max-abs criterion")
    ap.add_argument("--variants", nargs="*", help="only these variants (default: every golden found)")
    ap.add_argument("--no-bin", action="store_true", help="skip the second pass through pytorch_model.bin")
    ap.add_argument("--rss", action="store_true", help="measure the loader's peak RSS on the wt103 checkpoints")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    errs, failures, timings, skipped = Errors(args.tol, args.rtol), [], [], []
    if args.rss:  # first, while this process is small: a child inherits ru_maxrss across fork+exec
        dirs = [Path(d) / n for d in args.dirs for n in ("ckpt_wt103shape", "ckpt_wt103shape_bin")
                if (Path(d) / n).is_dir()]
        measure_rss(dirs) if dirs else print("\n--rss: no ckpt_wt103shape*/ found")
    tmp = Path(tempfile.mkdtemp(prefix="ref_parity_"))
    try:
        for dname in args.dirs:
            dpath = Path(dname)
            if not dpath.is_dir():
                print(f"(no directory {dpath}, skipped)")
                continue
            for g in sorted(dpath.glob("golden_*.npz")):
                variant = g.stem[len("golden_"):]
                if args.variants and variant not in args.variants:
                    continue
                with np.load(g) as z:
                    if "hf_seg0_hidden_states" not in z.files:
                        skipped.append(f"{g} (not a language-model golden)")
                        continue
                targets = []
                ckpt = dpath / f"ckpt_{variant}"
                if ckpt.is_dir():
                    targets.append((f"{variant}", ckpt))
                    if not args.no_bin and (ckpt / "pytorch_model.bin").is_file() \
                            and (ckpt / "model.safetensors").is_file():
                        targets.append((f"{variant}[bin]", bin_only_copy(ckpt, tmp)))
                if (dpath / f"ckpt_{variant}_bin").is_dir() and not args.no_bin:
                    targets.append((f"{variant}[bin]", dpath / f"ckpt_{variant}_bin"))
                if not targets:
                    skipped.append(f"{g} (no ckpt_{variant}/ beside it)")
                    continue
                for label, ck in targets:
                    label = f"{label} ({dpath.name})"
                    try:
                        t_load, t_all = check_variant(variant, g, ck, errs, label)
                        timings.append((label, t_load, t_all))
                    except Exception as e:
                        failures.append(f"{label}: {type(e).__name__}: {e}")
                        traceback.print_exc()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    cols = ["hidden_states", "attn_sublayer_out", "attentions", "mems_out", "logprobs", "losses", "loss",
            "fused_logprobs", "fused_mems_out", "pos_emb", "attn_mask", "mems_in", "masked_losses", "masked_loss"]
    short = {"hidden_states": "hidden", "attn_sublayer_out": "attn_sub", "attentions": "attn", "mems_out": "mems_out",
             "logprobs": "logprobs", "losses": "losses", "loss": "loss", "fused_logprobs": "f_logp",
             "fused_mems_out": "f_mems", "pos_emb": "pos_emb", "attn_mask": "mask", "mems_in": "mems_in",
             "masked_losses": "m_losses", "masked_loss": "m_loss"}
    print(f"\nmax |ours - golden| per variant and memory mode ('!' = some element has |d| > {args.tol:g} + "
          f"{args.rtol:g}*|golden|; '-' = not in golden)")
    print(f"{'variant (dir)':<42} {'mode':<5} " + " ".join(f"{short[c]:>9}" for c in cols))
    worst, bad = 0.0, []
    for (variant, mode), row in errs.rows.items():
        cells = []
        for c in cols:
            if c not in row:
                cells.append(f"{'-':>9}")
                continue
            e = row[c]
            worst = max(worst, e)
            failed = c in errs.fails.get((variant, mode), ())
            cells.append(f"{e:9.1e}" + ("!" if failed else " "))
        print(f"{variant:<42} {mode:<5} " + " ".join(cells))
    for (variant, mode), names in errs.fails.items():
        bad += [f"{variant} {mode} {c}: max abs {errs.rows[(variant, mode)][c]:.3g}" for c in sorted(names)]
    for label, t_load, t_all in timings:
        print(f"  time {label}: load {t_load:.2f}s, total {t_all:.2f}s")
    for s in skipped:
        print(f"skipped: {s}")
    for s in errs.shape_problems:
        print(f"SHAPE MISMATCH: {s}")
    for f in failures:
        print(f"FAILED: {f}")
    ok = not bad and not failures and errs.rows
    print(f"\n{'PASS' if ok else 'FAIL'}: {len(errs.rows)} variant/mode rows, worst error {worst:.3g}"
          + (f"; {len(bad)} over tolerance:\n  " + "\n  ".join(bad) if bad else "")
          + (f"; {len(failures)} failed to load/run" if failures else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
