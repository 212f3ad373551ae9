"""`--max-minutes`: a run stopped by its time budget validates the steps done since its last evaluation, so
the work of the last stretch is not thrown away, and a budget shorter than one evaluation still leaves a model."""
from __future__ import annotations

import torch

from pipelines.modeldir import load_model_dir
from pipelines.trainer import Recipe, Trainer
from tests.synth import make_corpus
from tests.tiny_model import make_model_dir


def _trainer(tmp_path, *, stop_at: int) -> tuple[Trainer, list[int]]:
    md = load_model_dir(make_model_dir(tmp_path / "m"))
    corpus = make_corpus(20, seed=2)
    ids = [e.ids for e in md.tokenizer.encode_batch(corpus["text"].tolist())]
    y = torch.tensor([md.labels.index(label) for label in corpus["label"]])
    trainer = Trainer(md, Recipe(batch_size=4, epochs=3, evals_per_epoch=1, patience=10), train_ids=ids, train_y=y,
                      valid_texts=corpus["text"].tolist()[:6], valid_labels=corpus["label"].tolist()[:6],
                      out=tmp_path / "out", device=torch.device("cpu"))
    trainer.out_of_time = lambda started: trainer.state.step >= stop_at  # the budget runs out at step `stop_at`
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
