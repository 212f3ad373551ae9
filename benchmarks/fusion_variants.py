"""Fusion methods compared on the cache benchmarks/fusion_cache.py wrote: test accuracy (micro-F1 when
multi-label) of each way of weighing the encoder against the n-grams, every model in the cache.

    python -m benchmarks.fusion_variants --cache runs/fusion_cache [--variants plain prior ...]

Variants (a: the encoder's weight, b: the n-grams'; the n-grams scored on test by their training +
validation fit, as `txl train` keeps them). Each cell: test figure (validation figure; a, b).
- `plain`: a, b fit together by log-loss on the validation split (`pipelines.model.fusion.fit_fusion` with no prior).
- `prior`: the same under the prior on log(b / a) (`fit_fusion` as `txl train` runs it);
  `prior-0.5`, `prior-2`: with that prior's sd 0.5 or 2 instead of PRIOR_SD (1).
- `separate`: each part temperature-calibrated alone on the validation split (`pipelines.model.fusion.calibrate`):
  the prior's centre.
- `encoder`, `ngram`: one part alone.

    python -m benchmarks.fusion_variants --cache runs/fusion_cache --curve    # test / validation errors against b / a
    python -m benchmarks.fusion_variants --cache runs/fusion_cache --resample 200 --variants plain prior
    python -m benchmarks.fusion_variants --cache runs/fusion_cache --errors   # what every seed gets wrong
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from pipelines.model import fusion
from pipelines.model.fusion import fused_logits
from pipelines.model.metrics import decide, tune_thresholds


def weights(variant: str, c: dict, rows: np.ndarray | None = None) -> dict:
    """The fusion weights a, b, c of `variant` from a model's cached validation scores (those `rows` of them)."""
    ml = c["multi_label"]
    rows = np.arange(len(c["yv"])) if rows is None else rows
    enc_v, sv = c["enc_v"].float()[rows], torch.as_tensor(c["sv"]).float()[rows]
    yv = torch.as_tensor(np.asarray(c["yv"])[rows])
    if variant == "encoder":
        return {"a": 1.0, "b": 0.0, "c": 0.0}
    if variant == "ngram":
        return {"a": 0.0, "b": 1.0, "c": 0.0}
    if variant == "separate":
        (ta, ca), (tb, cb) = (fusion.calibrate(x, yv, multi_label=ml)
                              for x in (enc_v if ml else torch.log_softmax(enc_v, -1), sv))
        return {"a": math.exp(ta), "b": math.exp(tb), "c": ca + cb}
    sd = {"plain": 1e6, "prior": fusion.PRIOR_SD}.get(variant) or float(variant.split("-")[1])
    w = fusion.fit_fusion(enc_v, sv.numpy(), yv, multi_label=ml, prior_sd=sd)
    return {k: w[k] for k in ("a", "b", "c")}


def score(c: dict, w: dict) -> tuple[float, float]:
    """Test figure of the fused model, and validation figure (n-grams of the training fit)."""
    ml = c["multi_label"]
    out = []
    for enc, s, y in ((c["enc_t"], c["st_all"], c["yt"]), (c["enc_v"], c["sv"], c["yv"])):
        z = fused_logits(enc.float(), torch.as_tensor(s).float(), multi_label=ml, **w)
        out.append((z, np.asarray(y)))
    if not ml:
        return tuple(float((z.argmax(1).numpy() == y).mean()) for z, y in out)
    (zt, yt), (zv, yv) = out
    th = tune_thresholds(torch.sigmoid(zv).numpy(), yv)
    res = []
    for z, y in ((zt, yt), (zv, yv)):
        chosen, truth = decide(torch.sigmoid(z).numpy(), th), y.astype(bool)
        res.append(2 * float((chosen & truth).sum()) / float(chosen.sum() + truth.sum()))
    return tuple(res)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--curve", action="store_true", help="errors against b / a instead (single-label models)")
    ap.add_argument("--errors", action="store_true",
                    help="instead: per data set, the test documents its encoders (every seed) and n-grams get wrong")
    ap.add_argument("--resample", type=int, default=0,
                    help="instead: fit on this many bootstrap resamples of each model's validation split")
    ap.add_argument("--size", type=int, default=0, help="documents in each resample (default: the split's own)")
    ap.add_argument("--variants", nargs="+",
                    default=["encoder", "ngram", "plain", "separate", "prior", "prior-0.5", "prior-2"])
    args = ap.parse_args()
    if args.curve:
        return curve(args.cache)
    if args.errors:
        return errors(args.cache)
    if args.resample:
        return resample(args.cache, args.resample, args.size, args.variants)
    print("| model | " + " | ".join(args.variants) + " |\n|---|" + "---:|" * len(args.variants))
    for path in sorted(args.cache.glob("*.pt")):
        c = torch.load(path, weights_only=False)
        cells = []
        for v in args.variants:
            w = weights(v, c)
            test, valid = score(c, w)
            cells.append(f"{100 * test:.2f} ({100 * valid:.1f}; {w['a']:.2g}, {w['b']:.2g})")
        print(f"| {path.stem} | " + " | ".join(cells) + " |", flush=True)
    return 0


def resample(cache: Path, draws: int, size: int, variants: list[str]) -> int:
    """Each variant fit on `draws` seeded bootstrap resamples of the validation split (`size` documents drawn
    with replacement; 0: as many as the split has), as if `txl train` had carved another split; the test
    figures' mean, sd and minimum, and how often b < a."""
    print(f"{draws} bootstrap resamples of each validation split ({size or 'its own size'} documents); test figure "
          "mean / sd / min, share of fits with b < a\n\n| model | " + " | ".join(variants) + " |\n|---|"
          + "---:|" * len(variants))
    for path in sorted(cache.glob("*.pt")):
        c = torch.load(path, weights_only=False)
        rng = np.random.default_rng(0)
        subsets = [rng.choice(len(c["yv"]), size=size or len(c["yv"]), replace=True) for _ in range(draws)]
        cells = []
        for v in variants:
            fits = [weights(v, c, rows) for rows in subsets]
            test = 100 * np.array([score(c, w)[0] for w in fits])
            low = np.mean([w["b"] < w["a"] for w in fits])
            cells.append(f"{test.mean():.2f} / {test.std():.2f} / {test.min():.2f}, {100 * low:.0f}%")
        print(f"| {path.stem} | " + " | ".join(cells) + " |", flush=True)
    return 0


def errors(cache: Path) -> int:
    """Per single-label data set with several cached seeds: how many test documents the encoder gets wrong in
    k of the seeds, and which it gets wrong in all of them (test-split row numbers) with the n-grams too."""
    groups: dict[str, list[dict]] = {}
    for path in sorted(cache.glob("*.pt")):
        groups.setdefault(path.stem.split(".seed")[0], []).append(torch.load(path, weights_only=False))
    for name, caches in groups.items():
        if len(caches) < 2 or caches[0]["multi_label"]:
            continue
        truth = np.asarray(caches[0]["yt"])
        wrong = np.stack([c["enc_t"].argmax(1).numpy() != truth for c in caches]).sum(0)  # (N,) seeds wrong
        ngram = np.asarray(caches[0]["st_all"]).argmax(1) != truth  # the refit n-grams: the same in every seed
        always = np.flatnonzero(wrong == len(caches))
        print(f"{name}: {len(caches)} seeds, {len(truth)} test documents; wrong in k seeds: "
              + ", ".join(f"k={k}: {int((wrong == k).sum())}" for k in range(1, len(caches) + 1))
              + f"; n-grams wrong on {int(ngram.sum())}; wrong in every seed: {len(always)}, of them n-grams too: "
              f"{int(ngram[always].sum())} (rows {', '.join(str(i) for i in always[ngram[always]])})")
    return 0


def curve(cache: Path) -> int:
    """Test and validation accuracy against the ratio b / a (single-label: the decision depends on it alone)."""
    ratios = [0, 0.5, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64]
    print("| model | " + " | ".join(f"{r:g}" for r in ratios) + " |\n|---|" + "---:|" * len(ratios))
    for path in sorted(cache.glob("*.pt")):
        c = torch.load(path, weights_only=False)
        if c["multi_label"]:
            continue
        cells = []
        for r in ratios:
            w = {"a": 1.0, "b": float(r), "c": 0.0}
            z_t = fused_logits(c["enc_t"].float(), torch.as_tensor(c["st_all"]).float(), multi_label=False, **w)
            z_v = fused_logits(c["enc_v"].float(), torch.as_tensor(c["sv"]).float(), multi_label=False, **w)
            err_t = int((z_t.argmax(1).numpy() != np.asarray(c["yt"])).sum())
            err_v = int((z_v.argmax(1).numpy() != np.asarray(c["yv"])).sum())
            cells.append(f"{err_t} / {err_v}")
        print(f"| {path.stem} (test / valid errors) | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
