"""The project's own MeZO step decreases the loss of a small model, deterministically."""

from __future__ import annotations

from advisor.calibration.zeroth_order import MeZO
from advisor.torchload import import_torch


def _problem(seed: int):  # type: ignore[no-untyped-def]
    torch = import_torch()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    x = torch.randn(64, 16)
    y = torch.randint(0, 4, (64,))

    def loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(x), y))

    return model, loss


def test_mezo_decreases_the_loss() -> None:
    model, loss = _problem(0)
    opt = MeZO(model.parameters(), lr=1e-2, eps=1e-3, seed=0)
    start = loss()
    for _ in range(300):
        opt.step(loss)
    assert loss() < 0.9 * start


def test_mezo_is_deterministic_and_restores_the_weights_between_forwards() -> None:
    torch = import_torch()
    finals = []
    for _ in range(2):
        model, loss = _problem(1)
        opt = MeZO(model.parameters(), lr=1e-2, seed=7)
        for _ in range(5):
            opt.step(loss)
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(finals[0], finals[1])
    # With lr 0 a step perturbs and restores: the weights come back (to rounding).
    model, loss = _problem(2)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    MeZO(model.parameters(), lr=0.0, seed=3).step(loss)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.allclose(before, after, atol=1e-6)
