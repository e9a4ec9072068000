import math

import pytest
import torch

from tunegate.errors import InvalidConfig
from worker.training.hparams import resolve_hyperparameters
from worker.training.math import (
    IGNORE,
    Bistate,
    add_proximal_grad,
    bistate_steps,
    epoch_order,
    lr_at,
    proximal_value,
    step_groups,
    token_stats,
)


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
    assert len(step_groups(a, 3, 2)) == 2  # 4 micro-batches of at most 3, 2 a step


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


def test_constrained_terms_match_a_hand_computation():
    from worker.training.math import constrained_terms

    logp = torch.tensor([-1.0, -3.0, -0.2], requires_grad=True)
    ref = torch.tensor([-2.0, -1.0, -0.2])
    beta = torch.tensor([0.5, 2.0, 0.1])
    got = constrained_terms(logp, ref, beta)
    want = [
        2 / b * (math.log(1 + math.exp(b * (r - lp))) - math.log(2))
        for lp, r, b in ((-1.0, -2.0, 0.5), (-3.0, -1.0, 2.0), (-0.2, -0.2, 0.1))
    ]
    assert all(
        math.isclose(float(g), w, rel_tol=1e-5, abs_tol=1e-7) for g, w in zip(got.detach(), want, strict=True)
    )
    assert float(got[2]) == 0.0  # the model agrees with the base: nothing to pay
    # its gradient in log p is the cross-entropy's (-1) times 2 sigmoid(-b (log p - log p_ref))
    (grad,) = torch.autograd.grad(got.sum(), logp)
    weights = [
        2 / (1 + math.exp(b * (lp - r)))
        for lp, r, b in ((-1.0, -2.0, 0.5), (-3.0, -1.0, 2.0), (-0.2, -0.2, 0.1))
    ]
    assert all(math.isclose(-float(g), w, rel_tol=1e-5) for g, w in zip(grad, weights, strict=True))
    assert math.isclose(-float(grad[2]), 1.0, rel_tol=1e-6)  # at agreement: exactly cross-entropy's push
    assert -float(grad[0]) < 1.0 < -float(grad[1])  # ahead of the base: less push; behind it: more


def test_constrained_terms_tend_to_cross_entropy_as_beta_vanishes():
    from worker.training.math import constrained_terms

    logp, ref = torch.tensor([-0.5, -4.0]), torch.tensor([-1.5, -2.0])
    tiny = constrained_terms(logp, ref, torch.tensor([1e-4, 1e-4]))
    # (2/b)(softplus(b x) - log 2) -> x = ref - logp, i.e. cross-entropy minus the base's: same gradient
    assert torch.allclose(tiny, ref - logp, atol=1e-3)


def test_reply_rank_restarts_at_every_trained_reply_and_betas_follow_it():
    from worker.training.math import Constraint, reply_rank, token_betas

    mask = torch.tensor([[False, True, True, False, True, True, True], [True] * 7])
    rank = reply_rank(mask)
    assert rank[0][mask[0]].tolist() == [1, 2, 1, 2, 3]  # two replies of a multi-turn example
    assert rank[1].tolist() == [1, 2, 3, 4, 5, 6, 7]
    betas = token_betas(rank[1], Constraint(first=0.5, early=2.0, rest=0.1, early_tokens=5))
    assert torch.allclose(betas, torch.tensor([0.5, 2.0, 2.0, 2.0, 2.0, 0.1, 0.1]))
    with pytest.raises(ValueError):
        Constraint(rest=0.0)


def test_objective_stats_keeps_kl_positions_and_reports_the_plain_loss():
    from worker.training.math import constrained_terms, objective_stats, selected_stats

    torch.manual_seed(3)
    pred, teacher = torch.randn(4, 6), torch.randn(4, 6)  # (N, V)
    gold = torch.tensor([1, 2, 3, 4])
    use_kl = torch.tensor([False, True, False, False])
    ref_logp, beta = torch.tensor([-1.0, -2.0, -3.0, -0.5]), torch.tensor([0.5, 2.0, 2.0, 0.1])
    obj, loss, n, correct = objective_stats(pred, gold, teacher[use_kl], use_kl, ref_logp, beta)
    plain, n2, correct2 = selected_stats(pred, gold, teacher[use_kl], use_kl)
    assert (n, correct) == (n2, correct2) and math.isclose(float(loss), float(plain), rel_tol=1e-6)
    ce = torch.nn.functional.cross_entropy(pred, gold, reduction="none")  # (4,)
    p, q = torch.log_softmax(pred[1], -1), torch.log_softmax(teacher[1], -1)
    kl = float((q.exp() * (q - p)).sum())
    terms = constrained_terms(-ce, ref_logp, beta)
    want = float(terms[0] + terms[2] + terms[3]) + kl
    assert math.isclose(float(obj), want, rel_tol=1e-5)


def _flat(steps: list[tuple[bool, list[list[int]]]]) -> list[tuple[bool, int]]:
    return [(aligned, i) for aligned, group in steps for mb in group for i in mb]


def test_step_groups_cut_an_order_into_steps_of_micro_batches() -> None:
    assert step_groups([5, 4, 3, 2, 1], 2, 2) == [[[5, 4], [3, 2]], [[1]]]
    assert step_groups([], 2, 2) == []


def test_bistate_steps_alternate_blocks_of_each_kind_and_end_aligned() -> None:
    # 10 user examples, 4 alignment ones (indices 10..13); steps of 2 x 1 -> 5 user and 2 alignment steps
    steps = bistate_steps(10, 4, seed=3, epoch=1, micro=2, accum=1, rounds=2)
    states = [aligned for aligned, _ in steps]
    assert states == [False, False, True, False, False, False, True]  # blocks 2+1, 3+1: user first
    flat = _flat(steps)
    assert sorted(i for _, i in flat) == list(range(14))  # every example once an epoch
    assert all(aligned == (i >= 10) for aligned, i in flat)  # each step holds one kind only
    assert steps == bistate_steps(10, 4, seed=3, epoch=1, micro=2, accum=1, rounds=2)  # pure
    assert steps != bistate_steps(10, 4, seed=3, epoch=2, micro=2, accum=1, rounds=2)  # reshuffled


def test_bistate_rounds_are_bounded_by_the_shorter_kind() -> None:
    steps = bistate_steps(8, 2, seed=0, epoch=0, micro=2, accum=1, rounds=5)  # 1 alignment step: 1 round
    assert [aligned for aligned, _ in steps] == [False] * 4 + [True]
    user_only = bistate_steps(6, 0, seed=0, epoch=0, micro=2, accum=1, rounds=3)
    assert [a for a, _ in user_only] == [False] * 3
    assert sorted(i for _, i in _flat(user_only)) == list(range(6))
    with pytest.raises(ValueError, match="rho"):
        Bistate(rho=-1.0)
    with pytest.raises(ValueError, match="rounds"):
        Bistate(rounds=0)


def test_proximal_gradient_and_value_equal_autograd_of_the_term() -> None:
    torch.manual_seed(0)
    params = [torch.randn(3, 2, requires_grad=True), torch.randn(4, requires_grad=True)]
    point = [p.detach() + 0.1 * torch.randn_like(p) for p in params]
    rho = 0.7
    weights = [torch.randn_like(p) for p in params]

    def task_loss() -> torch.Tensor:
        return sum(((w * p) ** 2).sum() for w, p in zip(weights, params, strict=True))  # type: ignore[return-value]

    prox = sum(((p - a) ** 2).sum() for p, a in zip(params, point, strict=True))
    want = torch.autograd.grad(task_loss() + rho / 2 * prox, params)
    task_loss().backward()
    add_proximal_grad(params, point, rho)
    for p, w in zip(params, want, strict=True):
        torch.testing.assert_close(p.grad, w)
    # the value by hand: rho/2 times the summed squared distance
    hand = rho / 2 * sum(float(((p.detach() - a) ** 2).sum()) for p, a in zip(params, point, strict=True))
    assert proximal_value(params, point, rho) == pytest.approx(hand)
    assert proximal_value(params, [p.detach() for p in params], rho) == 0.0
