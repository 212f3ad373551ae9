"""`--max-minutes`: a run stopped by its time budget validates the steps done since its last evaluation, so
the work of the last stretch is not thrown away, and a budget shorter than one evaluation still leaves a model;
the learning rate decays to zero by the end of the budget when the budget ends before the epochs.
Also: a CPU trainer keeps big buffers in the heap from its first step."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipelines.model.model_dir import load_model_dir
from pipelines.training.recipe import Recipe, minutes_text, schedule_step
from pipelines.training.trainer import Trainer
from tests.synth import make_corpus
from tests.tiny_model import make_model_dir


def _trainer(tmp_path, *, stop_at: int | None, **recipe) -> tuple[Trainer, list[int]]:
    md = load_model_dir(make_model_dir(tmp_path / "m"))
    corpus = make_corpus(20, seed=2)
    ids = [e.ids for e in md.tokenizer.encode_batch(corpus["text"].tolist())]
    y = torch.tensor([md.labels.index(label) for label in corpus["label"]])
    recipe = Recipe(**{"batch_size": 4, "epochs": 3, "evals_per_epoch": 1, "patience": 10, **recipe})
    trainer = Trainer(md, recipe, train_ids=ids, train_y=y,
                      valid_texts=corpus["text"].tolist()[:6], valid_labels=corpus["label"].tolist()[:6],
                      out=tmp_path / "out", device=torch.device("cpu"))
    if stop_at is not None:
        trainer.out_of_time = lambda elapsed: trainer.state.step >= stop_at  # the budget runs out at step `stop_at`
    validated = []
    real = trainer._validate

    def counting(on_best):
        validated.append(trainer.state.step)
        real(on_best)

    trainer._validate = counting
    return trainer, validated


def test_a_budget_stop_validates_the_last_stretch(tmp_path):
    trainer, validated = _trainer(tmp_path, stop_at=7)  # 5 steps an epoch: evaluations at 5, then the stop at 7
    state = trainer.fit(lambda metrics: None)
    assert state.step == 7 and state.stopped.startswith("time budget")
    assert validated == [5, 7]


def test_a_stop_right_after_an_evaluation_does_not_repeat_it(tmp_path):
    trainer, validated = _trainer(tmp_path, stop_at=5)
    assert trainer.fit(lambda metrics: None).step == 5
    assert validated == [5]


def test_a_budget_shorter_than_one_evaluation_still_leaves_a_model(tmp_path):
    trainer, validated = _trainer(tmp_path, stop_at=2)
    saved = []
    state = trainer.fit(saved.append)
    assert validated == [2] and len(saved) == 1 and state.best_f1 >= 0


def _learning_rates(trainer: Trainer) -> list[float]:
    """The learning rate of every optimiser step the trainer takes from now on."""
    rates, real = [], trainer.opt.step
    trainer.opt.step = lambda *a, **k: rates.append(trainer.opt.param_groups[0]["lr"]) or real(*a, **k)
    return rates


def test_without_a_budget_the_schedule_is_warm_up_then_linear_decay_over_the_epochs(tmp_path):
    """3 epochs of 5 steps, warm-up 20% (3 steps): the rate rises to its peak, then falls linearly towards 0
    at the end of the last epoch, step by step as torch's LambdaLR over the steps gives it."""
    trainer, _ = _trainer(tmp_path, stop_at=None, warmup=0.2, lr=1e-3)
    rates = _learning_rates(trainer)
    assert trainer.fit(lambda metrics: None).stopped == ""
    want = [1e-3 * min((k + 1) / 3, (15 - k) / 12) for k in range(15)]
    assert rates == pytest.approx(want, rel=1e-12)
    assert max(rates) == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-3 / 12)


def test_a_budget_shorter_than_the_epochs_decays_the_rate_to_zero_by_its_end(tmp_path):
    """A 1-minute budget on a clock where each step takes 10 s: 7 of the 15 planned steps fit. The schedule
    runs on the budget's clock (2.5 steps of schedule per step), so warm-up is shorter and the rate reaches 0
    at the budget's end, where the step count alone would have stopped it at 75% of its peak."""
    trainer, _ = _trainer(tmp_path, stop_at=None, warmup=0.2, lr=1e-3, max_minutes=1)
    trainer.elapsed = lambda started: 10.0 * trainer.state.step
    validate = trainer._validate  # validations take no time on this clock: nothing kept for the last one
    trainer._validate = lambda on_best: (validate(on_best), setattr(trainer, "reserve", 0.0))
    rates = _learning_rates(trainer)
    state = trainer.fit(lambda metrics: None)
    assert state.stopped.startswith("time budget") and state.step == 7
    want = [1e-3 * min((2.5 * k + 1) / 3, (15 - 2.5 * k) / 12) for k in range(7)]
    assert rates == pytest.approx(want, abs=1e-15)
    assert rates[-1] == 0 and rates[-2] == pytest.approx(1e-3 * 2.5 / 12)


def test_a_budget_longer_than_the_epochs_leaves_the_schedule_to_the_steps(tmp_path):
    trainer, _ = _trainer(tmp_path, stop_at=None, warmup=0.2, lr=1e-3, max_minutes=60)
    trainer.elapsed = lambda started: 10.0 * trainer.state.step  # 15 steps: 2.5 of the 60 minutes
    rates = _learning_rates(trainer)
    assert trainer.fit(lambda metrics: None).stopped == ""
    assert rates == pytest.approx([1e-3 * min((k + 1) / 3, (15 - k) / 12) for k in range(15)], rel=1e-12)


def test_the_budget_clock_counts_earlier_sessions_of_a_resumed_run(tmp_path):
    """`--resume` keeps the time spent: a run that used 45 of its 60 minutes resumes three quarters through the
    schedule, whatever step it had reached."""
    trainer, _ = _trainer(tmp_path, stop_at=None, warmup=0.2, max_minutes=60)
    trainer.state.seconds, trainer.state.step = 45 * 60.0, 2
    elapsed = trainer.elapsed(time.time())
    assert 45 * 60 <= elapsed < 45 * 60 + 5
    assert schedule_step(trainer.state.step, trainer.total, elapsed, 60) == pytest.approx(0.75 * 15, abs=0.05)
    assert trainer.lr_scale(elapsed) == pytest.approx((15 - 11.25) / 12, abs=0.01)


def test_the_progress_bar_says_how_long_is_left():
    assert [minutes_text(s) for s in (30, 754, 3600, 7500)] == ["0.5min", "12.6min", "1h00m", "2h05m"]


def test_training_keeps_big_buffers_in_the_heap_from_its_first_step(tmp_path, monkeypatch):
    """The allocator setting that spares each batch re-zeroing fresh pages (1.3-1.4x in benchmarks/train_speed.py)
    is applied when a CPU trainer is made, not at its first validation (a whole epoch later)."""
    import pipelines.training.trainer as trainer_module
    calls = []
    monkeypatch.setattr(trainer_module, "tune_cpu_allocator", lambda: calls.append(1) or True)
    _trainer(tmp_path, stop_at=1)
    assert calls == [1]


ALLOCATE_TWICE = """
import resource, sys, torch
from pipelines.runtime.memory import tune_cpu_allocator
applied = tune_cpu_allocator() if sys.argv[1] == "tuned" else False
for _ in range(2):  # 64 MB, over glibc's mmap threshold; the heap settles after its first growths
    x = torch.ones(16 << 20); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(12 << 20)  # 48 MB: fits the freed 64 MB even when a small allocation took its first bytes
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


# The heap tests count 4 kB page faults: without bf16 units `import pipelines` puts big tensors on 2 MB pages
# (THP_MEM_ALLOC_ENABLE, tested below), which would hide the faults they count.
SMALL_PAGES = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0"}


def test_the_tuned_allocator_reuses_freed_pages():
    """Property behind `tune_cpu_allocator`: a big tensor allocated again takes no new page faults (glibc),
    where by default each one is a fresh mmap whose pages fault in (are zeroed) again (48 MB: 12,288 pages)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    faults = {}
    for mode in ("plain", "tuned"):
        out = subprocess.run([sys.executable, "-c", ALLOCATE_TWICE, mode], capture_output=True, text=True, check=True,
                             env=SMALL_PAGES)
        applied, n = out.stdout.split()
        faults[mode] = int(n)
        assert applied == ("True" if mode == "tuned" else "False")
    assert faults["plain"] > 10_000  # 48 MB / 4 kB pages = 12,288 fresh pages
    assert faults["tuned"] < 1_000


FRAGMENT_AND_TRIM = """
import os, torch
from pipelines.runtime.memory import release_free_memory, tune_cpu_allocator
tune_cpu_allocator()
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
blocks = [torch.ones(4 << 20) for _ in range(32)]  # 32 x 16 MB
kept = blocks[1::2]  # every other block freed: 16 holes of 16 MB between live blocks, resident until trimmed
del blocks
before = rss()
release_free_memory()
print(before, rss())
"""


def test_freed_fragments_go_back_to_the_system():
    """`release_free_memory` (called at most every minute by training steps and `predict` batches) returns the pages of freed
    chunks that the kept heap cannot hand back by itself: here 256 MB of holes between live tensors."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    out = subprocess.run([sys.executable, "-c", FRAGMENT_AND_TRIM], capture_output=True, text=True, check=True,
                         env=SMALL_PAGES)
    before, after = map(int, out.stdout.split())
    assert before - after > 200, (before, after)
    from pipelines.runtime.memory import FreeMemoryEvery
    assert FreeMemoryEvery(0).tick() and not FreeMemoryEvery(3600).tick()  # at most once per interval


def test_training_releases_free_memory_as_it_goes(tmp_path, monkeypatch):
    import pipelines.training.trainer as trainer_module
    ticks = []

    class Counting:
        def __init__(self, seconds):
            assert seconds == 60

        def tick(self):
            ticks.append(1)

    monkeypatch.setattr(trainer_module, "FreeMemoryEvery", Counting)
    trainer, _ = _trainer(tmp_path, stop_at=3)
    trainer.fit(lambda metrics: None)
    assert len(ticks) == 3  # after every CPU step


def test_predict_releases_free_memory_as_it_goes(tmp_path, monkeypatch):
    import pipelines.model.inference as inference
    from pipelines.model.inference import predict, prepare
    ticks = []
    monkeypatch.setattr(inference._FREE_MEMORY, "tick", lambda: ticks.append(1))
    md = prepare(load_model_dir(make_model_dir(tmp_path / "m")), precision="float32", device="cpu")
    texts = make_corpus(10, seed=3)["text"].tolist()
    assert len(predict(md, texts, batch_size=4)) == 10
    assert len(ticks) == 3  # after each of the 3 batches


FAULTS_OF_A_BIG_TENSOR = """
import resource, sys
from pipelines.runtime.memory import use_huge_pages
use_huge_pages()  # what `txl` does before a command imports torch
import os, torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(16 << 20)  # 64 MB, written at once: 16,384 faults on 4 kB pages, 32 on 2 MB pages
print(os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _thp_madvise_allowed() -> bool:
    try:
        return "[never]" not in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False


@pytest.mark.parametrize("user_value", [None, "0", "1"])
def test_float32_cpus_put_big_tensors_on_huge_pages_unless_the_user_says_otherwise(user_value):
    """`txl` turns on torch's transparent huge pages (THP_MEM_ALLOC_ENABLE) before any command
    allocates, on CPUs without bf16 units (where the commands run float32; bf16 autocast measured slower on
    huge pages): a fresh 64 MB tensor then faults in on 2 MB pages (tens to hundreds of faults, not 16,384),
    which took float32 fine-tuning from 554,000 page faults a step to 834 (benchmarks/train_speed.py).
    A value the user set is kept either way."""
    from pipelines.runtime.cpu import cpu_has_bf16_units
    if not sys.platform.startswith("linux") or not _thp_madvise_allowed():
        pytest.skip("Linux with transparent huge pages available (madvise or always) only")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if user_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = user_value
    out = subprocess.run([sys.executable, "-c", FAULTS_OF_A_BIG_TENSOR], capture_output=True, text=True, check=True,
                         env=env, cwd=Path(__file__).resolve().parents[1])
    value, faults = out.stdout.split()
    expected = user_value or ("unset" if cpu_has_bf16_units() else "1")
    assert value == expected
    if expected == "1":
        assert int(faults) < 2_000
    else:
        assert int(faults) > 10_000


def test_bf16_units_are_read_from_cpuinfo():
    """The huge-page choice follows the same CPU test as `--precision auto` (torch's mkldnn bf16 check)."""
    from pipelines.runtime.cpu import cpu_has_bf16_units
    from pipelines.runtime.device import cpu_has_native_bf16
    if not Path("/proc/cpuinfo").exists():
        pytest.skip("Linux only")
    assert cpu_has_bf16_units() == cpu_has_native_bf16()


def test_txl_train_says_when_the_budget_cut_the_schedule_short(tmp_path):
    """The model card and metrics.json tell a budget-fitted run from a completed one: steps against the
    planned steps, and that the learning rate decayed over the budget."""
    import json

    from pipelines.cli import main
    from tests.test_checkpoints import TINY
    make_corpus(150, seed=1).to_csv(tmp_path / "train.csv", index=False)  # 135 training documents: 17 steps an epoch
    assert main(["train", "--train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m"), "--epochs", "2",
                 "--max-minutes", "0.002", "--ngrams", "off", *TINY]) == 0
    training = json.loads((tmp_path / "m" / "metrics.json").read_text())["training"]
    assert training["stopped"].startswith("time budget") and training["planned_steps"] == 34
    assert 0 < training["steps"] < 34
    assert f"{training['steps']} of 34 planned steps, the learning rate decayed to zero over the budget" in (
        tmp_path / "m" / "README.md").read_text()


def test_the_budget_keeps_time_for_the_last_validation(tmp_path):
    """With a reserve, training stops when a step would leave less than the reserve; the reserve grows to the
    longest validation measured."""
    trainer, _ = _trainer(tmp_path, stop_at=None, max_minutes=1.0)
    trainer.reserve = 30.0
    assert not trainer.out_of_time(29.0) and trainer.out_of_time(31.0)
    trainer.reserve = 0.0
    real = trainer.evaluate

    def slow(texts, labels):  # a validation pass that takes a measurable while
        time.sleep(0.05)
        return real(texts, labels)

    trainer.evaluate = slow
    trainer.fit(lambda metrics: None)
    assert trainer.reserve >= 0.05


def test_the_best_models_validation_probabilities_are_kept_and_resumed(tmp_path):
    """What the fusion reads at the end (no second validation pass): the probabilities of the model saved as
    best, equal to its predictions, and back after a resume."""
    from pipelines.model.inference import predict, prepare
    from pipelines.model.model_dir import ModelDir

    trainer, _ = _trainer(tmp_path, stop_at=None, epochs=1)
    saved = {}

    def on_best(metrics):
        saved["weights"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit(on_best)
    md = ModelDir(trainer.md.model, trainer.md.tokenizer, trainer.md.labels)
    md.model.load_state_dict(saved["weights"])
    prepare(md, precision="float32", keep_weights=True)
    want = [[p.probs[n] for n in md.labels] for p in predict(md, trainer.valid_texts)]
    assert trainer.best_probs.shape == (6, len(md.labels))
    torch.testing.assert_close(torch.as_tensor(trainer.best_probs), torch.tensor(want), atol=1e-5, rtol=0)
    again, _ = _trainer(tmp_path, stop_at=None, epochs=1)
    assert again.load_checkpoint() and (again.best_probs == trainer.best_probs).all()
