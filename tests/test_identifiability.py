"""The Jacobian rank of the shared gradient: how many independent equations an update gives."""

import torch
from torch import nn

from leakage.attacks.identifiability import gradient_jacobian, gradient_jacobian_rank


def _binary_linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 2))


def test_binary_linear_update_sees_f_plus_one_numbers_whatever_the_batch():
    # With 2 classes each image's output gradient is s_i * (1, -1), so the update
    # (mean_i s_i x_i^T (1, -1), mean_i s_i (1, -1)) holds only F + 1 = 7 independent numbers,
    # though it has 14 entries: a batch of 3 (18 unknowns) leaves 11 directions invisible.
    model = _binary_linear()
    x1, y1 = torch.rand(1, 1, 2, 3), torch.tensor([1])
    one = gradient_jacobian_rank(model, x1, y1)
    assert (one.entries, one.unknowns, one.rank, one.invisible) == (14, 6, 6, 0)
    x3, y3 = torch.rand(3, 1, 2, 3), torch.tensor([0, 1, 1])
    three = gradient_jacobian_rank(model, x3, y3)
    assert (three.entries, three.unknowns, three.rank, three.invisible) == (14, 18, 7, 11)
    assert three.singular_values[7] < three.rtol * three.singular_values[0] < three.singular_values[6]


def test_jacobian_columns_match_finite_differences_and_leave_the_model_alone():
    model = _binary_linear()
    x, y = torch.rand(2, 1, 2, 3), torch.tensor([0, 1])
    J = gradient_jacobian(model, x, y)
    assert J.shape == (14, 12) and J.dtype == torch.float64
    assert next(model.parameters()).dtype == torch.float32

    def update(xx: torch.Tensor) -> torch.Tensor:
        m = _binary_linear().double()
        loss = nn.functional.cross_entropy(m(xx), y)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(m.parameters()))])

    x64, eps = x.double(), 1e-6
    for j in (0, 5, 11):
        e = torch.zeros(12, dtype=torch.float64)
        e[j] = eps
        fd = (update(x64 + e.view_as(x64)) - update(x64 - e.view_as(x64))) / (2 * eps)
        assert torch.allclose(J[:, j], fd, atol=1e-7)
