"""Multi-label decisions: thresholds tuned on validation data, at least one label per document, the prior
bias of a fresh head and the positive-example weights of the loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.model.metrics import MIN_POSITIVES, THRESHOLD_GRID, decide, tune_thresholds
from pipelines.training.recipe import class_weight_tensor, prior_bias
from txl_core import TXLConfig


def test_decide_keeps_labels_over_their_threshold_and_always_the_top_one():
    probs = np.array([[0.9, 0.6, 0.1], [0.2, 0.3, 0.1], [0.45, 0.5, 0.35]])
    assert decide(probs).tolist() == [[True, True, False], [False, True, False], [False, True, False]]
    assert decide(probs, [0.95, 0.7, 0.3]).tolist() == [[True, False, False], [False, True, False],
                                                         [False, True, True]]


def _scores(n: int, rng: np.random.Generator):
    """Label 0 frequent, its positives scored 0.3-0.4 (a model that under-calls it); label 1 frequent, its
    negatives up to 0.55; label 2 with too few validation examples for a threshold of its own; label 3 on
    every document, surely (so that `decide`'s most probable label is never one of the others)."""
    truth = np.zeros((n, 4), dtype=int)
    truth[:, 3] = 1
    truth[:, 0] = rng.random(n) < 0.4
    truth[:, 1] = rng.random(n) < 0.3
    truth[rng.choice(n, MIN_POSITIVES - 1, replace=False), 2] = 1
    probs = np.where(truth == 1, rng.uniform(0.6, 0.95, (n, 4)), rng.uniform(0.0, 0.2, (n, 4)))
    probs[:, 3] = 0.99
    probs[:, 0] = np.where(truth[:, 0] == 1, rng.uniform(0.3, 0.4, n), rng.uniform(0.0, 0.25, n))
    probs[:, 1] = np.where(truth[:, 1] == 1, rng.uniform(0.6, 0.95, n), rng.uniform(0.0, 0.55, n))
    return probs, truth


def _micro_f1(truth, chosen) -> float:
    return 2 * (truth & chosen).sum() / (truth.sum() + chosen.sum())


def test_thresholds_are_tuned_where_validation_has_the_examples():
    probs, truth = _scores(400, np.random.default_rng(0))
    t = tune_thresholds(probs, truth)
    assert 0.25 < t[0] <= 0.3 and 0.5 < t[1] <= 0.6  # each between its negatives and its positives
    shared = max(THRESHOLD_GRID, key=lambda v: (_micro_f1(truth, decide(probs, [v] * 4)), -abs(v - 0.5)))
    assert t[2] == shared  # label 2 has too few examples: the value best for all labels together
    assert _micro_f1(truth, decide(probs, t)) > _micro_f1(truth, decide(probs)) + 0.05  # 0.5 misses label 0
    fresh_probs, fresh_truth = _scores(400, np.random.default_rng(1))  # and it holds on new data
    assert _micro_f1(fresh_truth, decide(fresh_probs, t)) > _micro_f1(fresh_truth, decide(fresh_probs)) + 0.05


def test_positive_weights_balance_each_label():
    y = torch.tensor([[1, 0], [0, 0], [0, 0], [0, 1], [1, 0]], dtype=torch.float)  # 2 of 5, 1 of 5
    assert torch.allclose(class_weight_tensor(y, 2, "balanced"), torch.tensor([1.5, 4.0]))
    assert torch.allclose(class_weight_tensor(y, 2, "sqrt"), torch.tensor([1.5, 4.0]).sqrt())
    assert class_weight_tensor(y, 2, "none") is None


@pytest.mark.parametrize("how", ["none", "sqrt", "balanced"])
def test_the_prior_bias_is_where_a_document_blind_head_stops_learning(how):
    torch.manual_seed(0)
    y = (torch.rand(4000, 6) < torch.tensor([0.5, 0.2, 0.05, 0.01, 0.3, 0.005])).float()
    w = class_weight_tensor(y, 6, how)

    def grad(b: torch.Tensor) -> torch.Tensor:
        b = b.detach().requires_grad_()
        F.binary_cross_entropy_with_logits(b.expand_as(y), y, pos_weight=w).backward()
        return b.grad.abs()

    bias = prior_bias(y, w)
    # the smoothing (+0.5 example) leaves a trace of gradient, far below that of a bias half a unit off
    assert (grad(bias) < 0.1 * torch.minimum(grad(bias - 0.5), grad(bias + 0.5))).all()


def test_thresholds_are_checked_in_the_config():
    TXLConfig(num_labels=2, thresholds=[0.3, 0.6])
    for bad in ([0.3], [0.0, 0.5], [0.5, 1.0]):
        with pytest.raises(ValueError, match="thresholds"):
            TXLConfig(num_labels=2, thresholds=bad)
