"""The toy flows of notebook 02 pass the same harness as the image layers: exact inverse and
log-determinants equal to a brute-force Jacobian; their densities integrate to one."""
import math

import numpy as np
import pytest
import torch

from cdflow_lib import toyflows


def perturb(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Move every parameter off its initial value (zero-initialised last layers included)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


FACTORIES = {
    "elementwise_affine": lambda: toyflows.ElementwiseAffine(3),
    "coupling": lambda: toyflows.AffineCoupling(3, hidden=8),
    "coupling_flip": lambda: toyflows.AffineCoupling(3, hidden=8, flip=True),
    "coupling_flow_2d": lambda: toyflows.coupling_flow(2, 4, hidden=8),
    "coupling_flow_3d": lambda: toyflows.coupling_flow(3, 3, hidden=8),
    "mixture_cdf_1d": lambda: toyflows.MixtureCDF1d(4),
}
DIMS = {"coupling_flow_2d": 2, "mixture_cdf_1d": 1}


def make(name):
    torch.manual_seed(0)
    return perturb(FACTORIES[name]()).double(), DIMS.get(name, 3)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_inverse_recovers_input(name):
    layer, dim = make(name)
    x = torch.randn(50, dim, dtype=torch.float64)
    with torch.no_grad():
        z, logdet = layer(x)
        assert z.shape == x.shape and logdet.shape == (50,)
        assert (layer.inverse(z) - x).abs().max().item() < 1e-9


@pytest.mark.parametrize("name", list(FACTORIES))
def test_logdet_matches_bruteforce_jacobian(name):
    layer, dim = make(name)
    x = torch.randn(4, dim, dtype=torch.float64)
    _, logdet = layer(x)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0][0], x[i])
        assert torch.linalg.slogdet(jac)[1].item() == pytest.approx(logdet[i].item(), abs=1e-9)


@pytest.mark.parametrize("flip", [False, True])
def test_coupling_jacobian_is_triangular_with_unit_block(flip):
    layer = perturb(toyflows.AffineCoupling(4, hidden=8, flip=flip)).double()
    x = torch.randn(4, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0][0], x)
    a = slice(2, 4) if flip else slice(0, 2)
    b = slice(0, 2) if flip else slice(2, 4)
    assert torch.equal(jac[a, a], torch.eye(2, dtype=torch.float64))      # a passes unchanged
    assert not jac[a, b].any()                                            # a does not see b
    assert torch.equal(jac[b, b], torch.diag(torch.diagonal(jac[b, b])))  # each b only scaled


def test_coupling_starts_as_identity():
    flow = toyflows.AffineCoupling(2)
    x = torch.randn(10, 2)
    z, logdet = flow(x)
    assert torch.equal(z, x) and not logdet.any()


def test_elementwise_initialize_standardises():
    x = torch.randn(1000, 2, dtype=torch.float64) * torch.tensor([20.0, 0.1]) + torch.tensor([5.0, -3.0])
    layer = toyflows.ElementwiseAffine(2).double()
    layer.initialize(x)
    z, logdet = layer(x)
    assert torch.allclose(z.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(z.std(0), torch.ones(2, dtype=torch.float64), atol=1e-10)
    assert logdet[0].item() == pytest.approx(-math.log(float(x[:, 0].std() * x[:, 1].std())))


def test_coupling_flow_density_integrates_to_one():
    flow = perturb(toyflows.coupling_flow(2, 4, hidden=8), 0.2).double()
    edges = torch.linspace(-12, 12, 601, dtype=torch.float64)
    mid = 0.5 * (edges[1:] + edges[:-1])
    grid = torch.cartesian_prod(mid, mid)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum().item() * (edges[1] - edges[0]).item() ** 2
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_mixture_density_integrates_to_one_and_is_the_mixture():
    flow = perturb(toyflows.MixtureCDF1d(3)).double()
    x = torch.linspace(-40, 40, 200_001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        p = flow.log_prob(x).exp()
    assert np.trapezoid(p.numpy(), x[:, 0].numpy()) == pytest.approx(1.0, abs=1e-6)
    pi, s = torch.softmax(flow.logits, 0), flow.log_scales.exp()
    u = (x - flow.means) / s
    by_hand = (pi * torch.sigmoid(u) * torch.sigmoid(-u) / s).sum(1)
    assert torch.allclose(p, by_hand, rtol=1e-8, atol=0.0)


def test_mixture_forward_is_the_normal_quantile_of_the_cdf():
    flow = perturb(toyflows.MixtureCDF1d(3)).double()
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)[:, None]
    with torch.no_grad():
        z, _ = flow(x)
    assert torch.allclose(torch.special.ndtr(z[:, 0]), flow.cdf(x), atol=1e-12)


def test_samples_follow_the_density():
    torch.manual_seed(0)
    flow = perturb(toyflows.coupling_flow(2, 2, hidden=8), 0.2)
    x = flow.sample(20_000, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z, _ = flow(x)
    assert z.mean(0).abs().max() < 0.03 and (z.std(0) - 1).abs().max() < 0.03


def test_fit_max_likelihood_reaches_the_gaussian_entropy():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(4000, 2, generator=g) * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, 2.0])
    flow = toyflows.coupling_flow(2, 2, hidden=16)
    flow.layers[0].initialize(data)
    losses = toyflows.fit_max_likelihood(flow, data, 60, lr=1e-2, batch_size=256, generator=g)
    entropy_per_dim = 0.5 * (1 + math.log(2 * math.pi)) + 0.5 * math.log(3.0 * 0.5)
    assert len(losses) == 60
    assert np.mean(losses[-20:]) == pytest.approx(entropy_per_dim, abs=0.05)


def test_dequantisation_noise_stops_the_collapse_onto_discrete_values():
    """Without noise a mixture put on integer data drives -log p below the entropy; with noise it cannot."""
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 4, (2000, 1), generator=g).double()
    results = {}
    for bin_width in (None, 1.0):
        flow = toyflows.MixtureCDF1d(4).double()
        with torch.no_grad():
            flow.means.copy_(torch.arange(4.0) + 0.5)
        losses = toyflows.fit_max_likelihood(flow, data, 150, lr=0.1, final_lr=1e-3, batch_size=256,
                                             bin_width=bin_width, generator=g)
        results[bin_width] = np.mean(losses[-20:])
    assert results[1.0] > math.log(4) - 0.01          # the entropy of 4 equally likely levels: log 4 nats
    assert results[None] < math.log(4) - 1.0
