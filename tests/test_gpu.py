"""Device and precision choice: `auto` means the GPU with bf16 autocast where there is one and float32 on the
CPU; a training step's gradient is that of the batch's mean loss; on a GPU (skipped without one) bf16
results equal the CPU's float32 results within bf16 tolerance.

The fused attention (SDPA, the position term passed as its additive bias) is checked against the reference
goldens in test_golden.py and against the explicit softmax in test_core_properties.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipelines.model.inference import predict, prepare
from pipelines.model.model_dir import ModelDir, load_model_dir
from pipelines.runtime import device as device_module
from pipelines.runtime.device import resolve_device, resolve_precision
from pipelines.training.recipe import Recipe
from pipelines.training.trainer import Trainer
from tests.synth import make_corpus
from tests.tiny_model import make_model_dir
from txl_core import TXLConfig
from txl_core.classifier import TXLDocumentClassifier

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
LENGTHS = [30, 5, 17, 9]  # up to four segments of 8: both backward routes of backward_document


def test_auto_is_the_gpu_with_bf16_when_there_is_one(monkeypatch):
    assert Recipe().precision == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_precision("auto", resolve_device("auto")) == "bf16"
    assert resolve_precision("auto", resolve_device("auto"), training=True) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    cpu = torch.device("cpu")
    for native, inference in ((True, "bf16"), (False, "float32")):  # training stays float32 on any CPU
        monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
        assert resolve_precision("auto", cpu) == inference
        assert resolve_precision("auto", cpu, training=True) == "float32"
        assert resolve_precision("int8", cpu) == "int8"


def _trainer(device: str, *, multi_label: bool, class_weights: str = "none", bidirectional: bool = False) -> Trainer:
    torch.manual_seed(0)
    config = TXLConfig(vocab_size=37, d_model=12, d_embed=12, n_head=2, d_head=6, d_inner=20, n_layer=2, cutoffs=[],
                       div_val=1, mem_len=5, clamp_len=13, same_length=False, segment_len=8, num_labels=3,
                       multi_label=multi_label, dropout=0.0, dropatt=0.0, classifier_dropout=0.0,
                       bidirectional=bidirectional)
    gen = torch.Generator().manual_seed(3)
    ids = [torch.randint(1, 37, (n,), generator=gen).tolist() for n in LENGTHS]
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 1, 0]]) if multi_label else torch.tensor([0, 1, 2, 2])
    md = ModelDir(TXLDocumentClassifier(config), None, ["a", "b", "c"])
    return Trainer(md, Recipe(class_weights=class_weights, clip=1e9), train_ids=ids, train_y=y, valid_texts=[],
                   valid_labels=[], out=Path("unused"), device=torch.device(device))


def _mean_loss_grads(trainer: Trainer) -> list[torch.Tensor]:
    """The gradients of the textbook loss over the whole batch, by plain back-propagation."""
    model, docs = trainer.model, list(range(len(LENGTHS)))
    model.zero_grad()
    logits = model(*trainer._padded(docs)).logits
    y, w = trainer.y[docs], trainer.weights
    loss = F.binary_cross_entropy_with_logits(logits, y.float(), pos_weight=w) if trainer.md.multi_label \
        else F.cross_entropy(logits, y, weight=w)
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("multi_label, class_weights", [(False, "sqrt"), (False, "none"), (True, "balanced")])
def test_a_cpu_step_follows_the_mean_loss_in_float32(multi_label, class_weights):
    trainer = _trainer("cpu", multi_label=multi_label, class_weights=class_weights)
    assert trainer.precision == "float32" and trainer.ddp is None  # auto on a CPU; one process: no DDP
    want = _mean_loss_grads(trainer)
    trainer.step(list(range(len(LENGTHS))))
    for p, g in zip(trainer.model.parameters(), want):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


@GPU
def test_gpu_bf16_predictions_equal_cpu_float32(tmp_path):
    texts = list(make_corpus(24, seed=5)["text"])
    path = make_model_dir(tmp_path / "model")
    cpu = predict(prepare(load_model_dir(path), precision="float32", device="cpu"), texts)
    gpu_md = prepare(load_model_dir(path))  # auto: the GPU, bf16
    assert gpu_md.device.type == "cuda" and gpu_md.precision == "bf16"
    gpu = predict(gpu_md, texts)
    for a, b in zip(cpu, gpu):
        assert max(abs(a.probs[k] - b.probs[k]) for k in a.probs) < 2e-2


@GPU
@pytest.mark.parametrize("bidirectional", [False, True])  # bidirectional: the MiniLM recipe's path, whose
def test_gpu_bf16_step_gradients_equal_cpu_float32(bidirectional):  # attention bias needs aligned rows on CUDA
    cpu = _trainer("cpu", multi_label=False, bidirectional=bidirectional)
    gpu = _trainer("cuda", multi_label=False, bidirectional=bidirectional)
    assert gpu.precision == "bf16"
    batch = list(range(len(LENGTHS)))
    cpu.step(batch)
    gpu.step(batch)
    for a, b in zip(cpu.model.parameters(), gpu.model.parameters()):
        a, b = a.grad.flatten(), b.grad.float().cpu().flatten()
        assert (a - b).norm() <= 3e-2 * a.norm() + 1e-6  # bf16 keeps 8 bits of mantissa


def test_the_gpu_bench_runs_and_rewrites_only_its_section(tmp_path):
    """`--device cpu --quick`: the script cannot rot where there is no GPU; no timing is asserted."""
    from benchmarks import gpu_bench as bench

    md, js = tmp_path / "RESULTS.md", tmp_path / "gpu.json"
    md.write_text(f"# Benchmarks\n\nkept above\n\n{bench.START}\nold table\n{bench.END}\n\nkept below\n")
    bench.main(["--device", "cpu", "--quick", "--out-md", str(md), "--out-json", str(js)])
    text, res = md.read_text(), json.loads(js.read_text())
    assert "old table" not in text and "kept above" in text and "kept below" in text and text.count(bench.START) == 1
    for name in ("classifier", "wt103"):
        m = res["models"][name]
        assert m["train"]["tokens_per_s"] > 0 and m["infer"]["tokens_per_s"] > 0
        assert [r["doc_tokens"] for r in m["memory"]] == list(bench.QUICK.mem_docs)
        assert f"| {name} |" in text
