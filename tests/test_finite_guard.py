"""The finite guard: the first non-finite step is the one named, counted from where a (resumed) run started."""
import pytest
import torch

from vla_lib.finite_guard import FiniteGuard, NonFiniteError


def test_the_first_non_finite_step_is_named_with_what_was_not_finite():
    guard = FiniteGuard("cpu", first_step=11)  # a run resumed after step 10
    one = torch.tensor(1.0)
    for loss, grad in [(one, one), (one, torch.tensor(float("inf"))), (torch.tensor(float("nan")), one)]:
        guard.update(loss, grad)
    with pytest.raises(NonFiniteError, match="step 12: the gradient norm was not finite"):
        guard.check("here")


def test_finite_steps_pass():
    guard = FiniteGuard("cpu")
    for _ in range(3):
        guard.update(torch.tensor(0.5), torch.tensor(2.0))
    guard.check("here")
