import math

import pytest
import torch

from tunegate.errors import InvalidConfig
from worker.training.hparams import resolve_hyperparameters
from worker.training.math import IGNORE, epoch_order, lr_at, steps_per_epoch, token_stats


def test_token_stats_counts_only_supervised_shifted_positions():
    # vocab 3; logits strongly predict token 2 everywhere
    logits = torch.tensor([[[0.0, 0.0, 10.0]] * 4])  # (1, 4, 3)
    labels = torch.tensor([[IGNORE, IGNORE, 2, 1]])
    loss_sum, n, correct = token_stats(logits, labels)
    assert n == 2 and correct == 1
    expected = -torch.log_softmax(torch.tensor([0.0, 0.0, 10.0]), -1)
    assert math.isclose(float(loss_sum), float(expected[2] + expected[1]), rel_tol=1e-5)


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 100, 1e-3, 0.1) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1e-3)
    assert lrs[-1] < lrs[50] < lrs[10]
    assert min(lrs) >= 1e-4 * 0.999


def test_epoch_order_is_a_permutation_and_deterministic():
    a, b = epoch_order(10, 3, 1), epoch_order(10, 3, 1)
    assert a == b and sorted(a) == list(range(10)) and a != epoch_order(10, 3, 2)
    assert steps_per_epoch(10, 3, 2) == 2


def test_resolve_hyperparameters_auto_and_explicit():
    r = resolve_hyperparameters({"n_epochs": "auto"}, 100)
    assert r.n_epochs == 3 and r.batch_size == 4 and r.learning_rate == pytest.approx(1e-4)
    r = resolve_hyperparameters({"batch_size": 32, "learning_rate_multiplier": 2}, 1000)
    assert r.micro_batch_size == 8 and r.grad_accum == 4 and r.learning_rate == pytest.approx(2e-4)
    with pytest.raises(InvalidConfig, match="n_epochs"):
        resolve_hyperparameters({"n_epochs": 1.5}, 10)
    with pytest.raises(InvalidConfig, match="unknown"):
        resolve_hyperparameters({"lr": 1}, 10)
    with pytest.raises(InvalidConfig, match="batch_size"):
        resolve_hyperparameters({"batch_size": -1}, 10)


def test_token_stats_anchor_rows_take_kl_to_the_teacher():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)  # (B, T, V)
    labels = torch.tensor([[IGNORE, 1, 2, 3], [IGNORE, IGNORE, 4, 0]])
    anchor = torch.tensor([True, False])
    ce_only, n, _ = token_stats(logits, labels)
    same, n2, _ = token_stats(logits, labels, logits.clone(), anchor)  # teacher == model: row 0 costs 0
    ce_row1, _, _ = token_stats(logits[1:], labels[1:])
    assert n == n2 == 5 and float(ce_only) > float(same)
    assert math.isclose(float(same), float(ce_row1), rel_tol=1e-5)
    teacher = torch.randn(2, 4, 5)
    mixed, _, _ = token_stats(logits, labels, teacher, anchor)
    p, q = torch.log_softmax(logits[0, :-1], -1), torch.log_softmax(teacher[0, :-1], -1)  # (T-1, V)
    kl_row0 = (q.exp() * (q - p)).sum(-1)[labels[0, 1:] != IGNORE].sum()  # (3,) summed
    assert math.isclose(float(mixed), float(kl_row0 + ce_row1), rel_tol=1e-5)


def test_token_stats_anchor_rows_keep_ce_on_their_opening():
    torch.manual_seed(1)
    logits, teacher = torch.randn(1, 5, 6), torch.randn(1, 5, 6)  # (B, T, V)
    labels = torch.tensor([[IGNORE, 2, 3, 4, 5]])  # 4 supervised tokens at positions 1..4
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], reduction="none")  # (4,)
    p, q = torch.log_softmax(logits[0, :-1], -1), torch.log_softmax(teacher[0, :-1], -1)  # (4, V)
    kl = (q.exp() * (q - p)).sum(-1)  # (4,)
    got, n, _ = token_stats(logits, labels, teacher, torch.tensor([True]), ce_head=2)
    assert n == 4 and math.isclose(float(got), float(ce[:2].sum() + kl[2:].sum()), rel_tol=1e-5)


def test_selected_stats_equals_token_stats_on_the_supervised_positions():
    from worker.training.math import selected_stats, supervised_positions

    torch.manual_seed(2)
    logits, teacher = torch.randn(3, 6, 7), torch.randn(3, 6, 7)  # (B, T, V)
    labels = torch.tensor(
        [[IGNORE, 1, 2, 3, 4, 5], [IGNORE, IGNORE, 4, 0, IGNORE, IGNORE], [IGNORE, IGNORE, IGNORE, 6, 6, 1]]
    )
    anchor = torch.tensor([True, False, True])
    want, n, correct = token_stats(logits, labels, teacher, anchor, ce_head=2)
    mask, kl = supervised_positions(labels, anchor, ce_head=2)  # (B, T-1) each
    gold, use_kl = labels[:, 1:][mask], kl[mask]  # (N,) each
    assert mask.shape == (3, 5) and gold.tolist() == [1, 2, 3, 4, 5, 4, 0, 6, 6, 1]
    # row 0: its 3rd-5th supervised tokens; row 1 is no anchor; row 2: its 3rd
    assert use_kl.tolist() == [False, False, True, True, True, False, False, False, False, True]
    got, n2, correct2 = selected_stats(logits[:, :-1][mask], gold, teacher[:, :-1][kl], use_kl)
    assert (n2, correct2) == (n, correct) and math.isclose(float(got), float(want), rel_tol=1e-5)
    plain, _, _ = selected_stats(logits[:, :-1][mask], gold)
    assert math.isclose(float(plain), float(token_stats(logits, labels)[0]), rel_tol=1e-5)
