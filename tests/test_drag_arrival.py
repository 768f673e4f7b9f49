"""A handle exactly on its target (possible with stop distance 0) has arrived: no 0/0 direction
reaches grid_sample, whose CPU backward crashed the process on the resulting NaN."""

from __future__ import annotations

import torch

from backend.drag import active_handles, motion_supervision_loss


def test_a_handle_on_its_target_is_done_and_the_loss_stays_finite() -> None:
    feats = torch.randn(1, 4, 16, 16, requires_grad=True)
    handles = torch.tensor([[5.0, 5.0], [3.0, 3.0]])
    targets = torch.tensor([[5.0, 5.0], [9.0, 3.0]])
    assert active_handles(handles, targets, 0.0).tolist() == [False, True]
    loss = motion_supervision_loss(feats, handles, targets, 1, 0.0)
    loss.backward()
    assert torch.isfinite(loss) and feats.grad is not None and torch.isfinite(feats.grad).all()
    assert not active_handles(handles[:1], targets[:1], 0.0).any()
    # The paper's stop distance is unaffected.
    assert active_handles(handles, targets, 2.0).tolist() == [False, True]
