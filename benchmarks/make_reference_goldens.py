"""Generate reference golden files from Hugging Face's TransfoXL (transformers 4.37.2).

Run with the REFERENCE venv only (never the product's .venv), from the repository root:

    bash benchmarks/reference_env.sh
    .refenv/bin/python -m benchmarks.make_reference_goldens --out /work/refgold
    .refenv/bin/python -m benchmarks.make_reference_goldens --out /work/refgold --variants wt103shape --wt103-full

It imports nothing else of this repository (benchmarks/__init__.py holds a docstring only), so .refenv needs no
path to it. Check our implementation against the goldens with the product venv: `.venv/bin/python -m
benchmarks.ref_parity`.

Recipe (as for shared/reference/golden_small_*.npz): seed 1234; HF init, then every parameter perturbed to
O(1)-scale random values (`perturb_params`) so that every path (attention biases, positions, memory)
visibly reaches the output; eval mode; float32; CPU. Per variant, in OUT:

* `golden_<variant>.npz` and `ckpt_<variant>/` (config.json + model.safetensors, `save_pretrained(...,
  safe_serialization=True)`, i.e. tied tensors dedup'd the HF way).

Small variants: exactly the key set of shared/reference/GOLDEN_FORMAT.md (`hf_` / `empty_` memory modes,
3 segments, bsz 2, hidden_states, attn_sublayer_out, attentions, pos_emb, attn_mask, mems in/out TIME-major as HF
returns them, logprobs, losses in token order (crit.keep_order=True), losses_hf_raw, loss, masked_*).

`wt103shape` (the real transfo-xl-wt103 hyper-parameters, random weights; bsz 1, 2 segments of qlen 128,
mem_len 1600 so `hf_` mode attends 1600 zero slots and clamp_len=1000 is active). Keys per `{hf,empty}_segS_`:
  hidden_states (19,1,128,1024), last_hidden_state, attn_sublayer_out (18,1,128,1024), pos_emb (K,1024),
  attn_mask (128,K), attentions_sel (len(attention_layers),1,16,128,K) for layers `attention_layers`,
  mems_in_tail / mems_out_tail (18, <=mem_tail_len, 1, 1024) = the LAST mem_tail_len rows (time-major) of the
  mems fed / returned, with mems_in_len / mems_out_len the full lengths (in hf mode the rows not stored are
  exactly the initial zeros, which `mems_*_head_absmax` records),
  logprobs_cols (1,128,len(vocab_cols)) = log-probs at the columns `vocab_cols` (4000 fixed random ids plus every
  target id of every segment, sorted), logprobs_rows (1,len(logprob_row_positions),267735) = full rows at a few
  positions, losses (1,127) token order, losses_hf_raw, loss.
With --wt103-full the checkpoint is written twice: ckpt_wt103shape/ (model.safetensors, dedup'd) and
ckpt_wt103shape_bin/ (pytorch_model.bin, `safe_serialization=False`). Without it no wt103 checkpoint is written
(1.1 GB each) and the golden cannot be checked.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.simplefilter("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from transformers import TransfoXLConfig, TransfoXLLMHeadModel  # noqa: E402

SEED = 1234

BASE = dict(vocab_size=1000, cutoffs=[100, 500], div_val=2, d_model=64, d_embed=64, n_head=4, d_head=16,
            d_inner=128, n_layer=3, mem_len=16, tgt_len=16, clamp_len=32, dropout=0.1, dropatt=0.0,
            same_length=True, untie_r=True, pre_lnorm=False)
SMALL = {
    # not in shared/reference: what this script exists for
    "small_clamp8": dict(clamp_len=8, same_length=True, untie_r=True),
    "small_dproj": dict(div_val=1, d_embed=32, d_model=64, cutoffs=[100, 500], same_length=False, untie_r=True),
    "small_nocut_dproj": dict(cutoffs=[], div_val=1, d_embed=48, d_model=64),
    "small_memlong": dict(mem_len=24, same_length=True),
    "small_memshort": dict(mem_len=8, same_length=True),
    "small_prelnorm_ur0": dict(pre_lnorm=True, untie_r=False),
    # the shared ones' configurations, same recipe (different random weights than the shared files)
    "small_sl1_ur1": dict(same_length=True, untie_r=True),
    "small_sl0_ur1": dict(same_length=False, untie_r=True),
    "small_sl1_ur0": dict(same_length=True, untie_r=False),
    "small_sl0_ur0": dict(same_length=False, untie_r=False),
    "small_prelnorm": dict(pre_lnorm=True, same_length=False, untie_r=True),
    "small_plain": dict(cutoffs=[], div_val=1),
}
WT103 = dict(vocab_size=267735, cutoffs=[20000, 40000, 200000], div_val=4, d_model=1024, d_embed=1024, n_head=16,
             d_head=64, d_inner=4096, n_layer=18, mem_len=1600, tgt_len=128, clamp_len=1000, dropout=0.1,
             dropatt=0.0, same_length=True, untie_r=True, pre_lnorm=False)
DEFAULT_VARIANTS = ["small_clamp8", "small_dproj", "small_nocut_dproj", "small_memlong", "small_memshort",
                    "small_prelnorm_ur0", "wt103shape"]


def make_config(overrides: dict, base: dict) -> TransfoXLConfig:
    kw = dict(base) | dict(overrides)
    kw["tie_projs"] = [False] + [True] * len(kw["cutoffs"])  # what proj_share_all_but_first=True gives
    return TransfoXLConfig(**kw)


def perturb_params(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Overwrite every (deduplicated) parameter with O(1)-scale random values.

    Linear weights (out, in): N(0, 1/in); projections (d_model, d_emb_i): N(0, 1/d_model); embedding tables:
    N(0, 0.5^2); r_w_bias / r_r_bias: N(0, 0.5^2); LayerNorm weight 1 + N(0, 0.2^2); every bias and
    cluster_weight: N(0, 0.1^2).
    """
    def normal(p, std, mean=0.0):
        p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std + mean)

    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters appear once
            if "emb_layers" in name or name.endswith(("r_w_bias", "r_r_bias")):
                normal(p, 0.5)
            elif "layer_norm.weight" in name:
                normal(p, 0.2, 1.0)
            elif "emb_projs" in name or "out_projs" in name:
                normal(p, 1 / np.sqrt(p.shape[0]))
            elif name.endswith("cluster_weight") or p.dim() == 1:
                normal(p, 0.1)
            elif p.dim() == 2:
                normal(p, 1 / np.sqrt(p.shape[1]))
            else:
                raise AssertionError(f"no perturbation rule for {name} {tuple(p.shape)}")


def build_model(config: TransfoXLConfig) -> TransfoXLLMHeadModel:
    torch.manual_seed(SEED)
    model = TransfoXLLMHeadModel(config)
    perturb_params(model, torch.Generator().manual_seed(SEED))
    model.tie_weights()
    return model.eval()


class Capture:
    """Hooks for the intermediates HF does not return: pos_emb, the mask, each attention sub-layer's output."""

    def __init__(self, model):
        self.on, self.data = False, {}
        tr = model.transformer
        tr.pos_emb.register_forward_hook(self._store("pos_emb", lambda o: o[:, 0]))
        tr.layers[0].register_forward_pre_hook(self._mask, with_kwargs=True)
        for i, layer in enumerate(tr.layers):
            layer.dec_attn.register_forward_hook(self._store(f"sub{i}", lambda o: o[0].transpose(0, 1)))

    def _store(self, key, fn):
        def hook(module, args, output):
            if self.on:
                self.data[key] = fn(output).detach().clone()
        return hook

    def _mask(self, module, args, kwargs):
        if self.on:
            self.data["attn_mask"] = kwargs["dec_attn_mask"][:, :, 0].clone()


def np32(t):
    return t.detach().cpu().numpy().astype(np.float32)


def run_segments(model, config, input_ids, mode, cap, out, *, wt103=False, vocab_cols=None, row_pos=None,
                 attn_layers=None, tail=None):
    """Run the segments of input_ids (S, B, T) in one memory mode; write `{mode}_segS_*` keys into out."""
    n_seg, bsz, _ = input_ids.shape
    mems = None if mode == "hf" else [torch.zeros(0, bsz, config.d_model)] * config.n_layer
    for s in range(n_seg):
        ids = input_ids[s]
        p = f"{mode}_seg{s}_"
        with torch.no_grad():
            cap.on, cap.data = True, {}
            o = model(ids, mems=mems, output_hidden_states=True, output_attentions=True, return_dict=True)
            cap.on = False
            model.crit.keep_order = True
            lo = model(ids, mems=mems, labels=ids.clone(), return_dict=True)
            model.crit.keep_order = False
            lo_raw = model(ids, mems=mems, labels=ids.clone(), return_dict=True)
        hs = torch.stack(o.hidden_states)  # (L+1, B, T, C)
        out[p + "hidden_states"] = np32(hs)
        out[p + "last_hidden_state"] = np32(hs[-1])
        out[p + "attn_sublayer_out"] = np32(torch.stack([cap.data[f"sub{i}"] for i in range(config.n_layer)]))
        out[p + "pos_emb"] = np32(cap.data["pos_emb"])
        out[p + "attn_mask"] = cap.data["attn_mask"].numpy().astype(bool)
        mems_out = torch.stack(o.mems)  # (L, M, B, C) time-major
        mems_in = None if mems is None else torch.stack(mems)
        if not wt103:
            out[p + "attentions"] = np32(torch.stack(o.attentions))
            if mems_in is not None:
                out[p + "mems_in"] = np32(mems_in)
            out[p + "mems_out"] = np32(mems_out)
            out[p + "logprobs"] = np32(o.prediction_scores)
        else:
            out[p + "attentions_sel"] = np32(torch.stack([o.attentions[i] for i in attn_layers]))
            for name, m in (("mems_in", mems_in), ("mems_out", mems_out)):
                if m is None:
                    continue
                out[p + name + "_tail"] = np32(m[:, -tail:])
                out[p + name + "_len"] = np.int64(m.shape[1])
                head = m[:, :-tail]
                out[p + name + "_head_absmax"] = np.float32(head.abs().max().item() if head.numel() else 0.0)
            lp = o.prediction_scores  # (B, T, V)
            out[p + "logprobs_cols"] = np32(lp[:, :, vocab_cols])
            out[p + "logprobs_rows"] = np32(lp[:, row_pos, :])
        out[p + "losses"] = np32(lo.losses)
        out[p + "losses_hf_raw"] = np32(lo_raw.losses)
        out[p + "loss"] = np.float32(lo.loss.item())
        mems = o.mems


def save_ckpt(model, directory: Path, safe: bool):
    if directory.exists():
        shutil.rmtree(directory)
    model.save_pretrained(str(directory), safe_serialization=safe)
    return sum(f.stat().st_size for f in directory.iterdir())


def make_small(name, out_dir: Path):
    config = make_config(SMALL[name], BASE)
    model = build_model(config)
    gen = torch.Generator().manual_seed(SEED)
    n_seg, bsz, qlen = 3, 2, config.tgt_len
    input_ids = torch.randint(0, config.vocab_size, (n_seg, bsz, qlen), generator=gen)
    out = {"config_json": np.array(model.config.to_json_string(use_diff=False)), "input_ids": input_ids.numpy()}
    cap = Capture(model)
    for mode in ("hf", "empty"):
        run_segments(model, config, input_ids, mode, cap, out)
    masked = input_ids[0].clone()
    masked[0, 3:6] = -100
    masked[1, 10] = -100
    out["masked_labels"] = masked.numpy()
    with torch.no_grad():
        model.crit.keep_order = True
        lo = model(input_ids[0], labels=masked.clone(), return_dict=True)
        model.crit.keep_order = False
    out["masked_losses"] = np32(lo.losses)
    out["masked_loss"] = np.float32(lo.loss.item())
    np.savez(out_dir / f"golden_{name}.npz", **out)
    save_ckpt(model, out_dir / f"ckpt_{name}", safe=True)


def make_wt103(out_dir: Path, full: bool):
    config = make_config({}, WT103)
    t0 = time.time()
    model = build_model(config)
    print(f"  wt103shape: built + perturbed {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params "
          f"in {time.time() - t0:.1f}s", flush=True)
    gen = torch.Generator().manual_seed(SEED)
    n_seg, bsz, qlen = 2, 1, config.tgt_len
    # every cluster gets tokens: pick a cluster uniformly, then an id uniformly inside it
    ends = [0] + config.cutoffs + [config.vocab_size]
    cl = torch.randint(0, len(ends) - 1, (n_seg, bsz, qlen), generator=gen)
    lo = torch.tensor(ends[:-1])[cl]
    width = torch.tensor(ends[1:])[cl] - lo
    input_ids = lo + (torch.rand(cl.shape, generator=gen, dtype=torch.float64) * width).long()
    rand_cols = torch.randperm(config.vocab_size, generator=gen)[:4000]
    vocab_cols = torch.unique(torch.cat([rand_cols, input_ids.reshape(-1)]))  # sorted
    row_pos = [0, qlen // 2 - 1, qlen - 1]
    attn_layers = [0, config.n_layer - 1]
    tail = 2 * qlen
    out = {"config_json": np.array(model.config.to_json_string(use_diff=False)), "input_ids": input_ids.numpy(),
           "vocab_cols": vocab_cols.numpy(), "logprob_row_positions": np.array(row_pos, dtype=np.int64),
           "attention_layers": np.array(attn_layers, dtype=np.int64), "mem_tail_len": np.int64(tail)}
    cap = Capture(model)
    for mode in ("hf", "empty"):
        t1 = time.time()
        run_segments(model, config, input_ids, mode, cap, out, wt103=True, vocab_cols=vocab_cols,
                     row_pos=row_pos, attn_layers=attn_layers, tail=tail)
        print(f"  wt103shape: {mode} mode, {n_seg} segments in {time.time() - t1:.1f}s", flush=True)
    np.savez(out_dir / "golden_wt103shape.npz", **out)
    if full:
        for sub, safe in (("ckpt_wt103shape", True), ("ckpt_wt103shape_bin", False)):
            t1 = time.time()
            size = save_ckpt(model, out_dir / sub, safe=safe)
            print(f"  wt103shape: {sub} {size / 2**20:.1f} MiB in {time.time() - t1:.1f}s", flush=True)
    else:
        print("  wt103shape: no checkpoint written (pass --wt103-full to write one; ref_parity needs it)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/work/refgold", type=Path)
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS,
                    help=f"any of {sorted(SMALL) + ['wt103shape']} (default: {' '.join(DEFAULT_VARIANTS)})")
    ap.add_argument("--wt103-full", action="store_true",
                    help="also write the full-size wt103shape checkpoint as model.safetensors and pytorch_model.bin")
    args = ap.parse_args(argv)
    unknown = [v for v in args.variants if v not in SMALL and v != "wt103shape"]
    if unknown:
        ap.error(f"unknown variants {unknown}")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    args.out.mkdir(parents=True, exist_ok=True)
    import transformers
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__} -> {args.out}")
    for name in args.variants:
        t0 = time.time()
        if name == "wt103shape":
            make_wt103(args.out, args.wt103_full)
        else:
            make_small(name, args.out)
        size = (args.out / f"golden_{name}.npz").stat().st_size
        print(f"{name}: golden {size / 2**20:.2f} MiB, {time.time() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
