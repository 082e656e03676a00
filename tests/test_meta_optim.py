import math

import pytest
import torch

from drray.meta.meta_optim import AveragedAdam, clip_by_global_norm


def test_single_proposal_matches_torch_adam():
    """With one inner model, averaging is the identity: the update is plain Adam."""
    torch.manual_seed(0)
    p = torch.randn(5, 3)
    ours = AveragedAdam((p,), lr=0.01)
    ref_param = p.clone().requires_grad_()
    ref = torch.optim.Adam([ref_param], lr=0.01)
    for _ in range(4):
        g = torch.randn(5, 3)
        ours.apply([(g,)])
        ref_param.grad = g.clone()
        ref.step()
    torch.testing.assert_close(ours.params[0], ref_param.detach(), rtol=1e-6, atol=1e-7)


def test_averages_proposals_not_gradients_hand_worked():
    """Two gradients +1 and -1 from zero state: each proposal moves by -+lr (Adam's first step
    is lr * sign); their mean is 0, and m averages to 0 while v averages to (1-b2)."""
    opt = AveragedAdam((torch.zeros(1),), lr=0.1, beta2=0.999, eps=0.0)
    opt.apply([(torch.ones(1),), (-torch.ones(1),)])
    assert opt.params[0].item() == pytest.approx(0.0, abs=1e-7)
    assert opt.m[0].item() == pytest.approx(0.0, abs=1e-7)
    assert opt.v[0].item() == pytest.approx(0.001)
    opt2 = AveragedAdam((torch.zeros(1),), lr=0.1, eps=0.0)
    opt2.apply([(torch.ones(1),), (3 * torch.ones(1),)])  # both proposals move by -0.1
    assert opt2.params[0].item() == pytest.approx(-0.1, rel=1e-5)


def test_clip_by_global_norm():
    grad = (torch.tensor([3.0]), torch.tensor([4.0]))
    clipped, norm = clip_by_global_norm(grad, 1.0)
    assert norm == pytest.approx(5.0)
    assert math.hypot(clipped[0].item(), clipped[1].item()) == pytest.approx(1.0, rel=1e-6)
    same, _ = clip_by_global_norm(grad, 10.0)
    assert same[0].item() == 3.0


def test_weight_decay_and_warmup_match_torch_adamw():
    """One proposal: AveragedAdam with weight decay and a linear warm-up is torch's AdamW under a
    LambdaLR of the same warm-up (an independent implementation)."""
    torch.manual_seed(1)
    p = torch.randn(4, 3)
    ours = AveragedAdam((p,), lr=0.05, weight_decay=0.1, warmup_steps=3)
    ref_param = p.clone().requires_grad_()
    ref = torch.optim.AdamW([ref_param], lr=0.05, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(ref, lambda step: min(1.0, (step + 1) / 3))
    for _ in range(6):
        g = torch.randn(4, 3)
        ours.apply([(g,)])
        ref_param.grad = g.clone()
        ref.step()
        schedule.step()
    torch.testing.assert_close(ours.params[0], ref_param.detach(), rtol=1e-5, atol=1e-6)


def test_warmup_schedule_hand_worked():
    opt = AveragedAdam((torch.zeros(1),), lr=0.1, warmup_steps=4)
    assert [opt.lr_at(c) for c in (1, 2, 4, 5, 100)] == pytest.approx([0.025, 0.05, 0.1, 0.1, 0.1])
    assert AveragedAdam((torch.zeros(1),), lr=0.1).lr_at(1) == 0.1
