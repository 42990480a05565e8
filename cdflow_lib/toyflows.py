"""Tiny normalizing flows on points, for teaching the change of variables (notebook 02).

CD-Flow's layers (layers.py) act on images [B, C, H, W]; these act on points [B, D]: an
a*b* chromaticity (D = 2) or a single pixel value (D = 1). The conventions are the same:
``forward`` maps data x to the latent z (the normalising direction) and returns
``(z, logdet)`` with ``logdet`` [B] = log |det dz/dx| (natural log); ``inverse`` maps back.
With a standard normal prior on z, the change of variables gives

    log p_x(x) = log N(f(x); 0, I) + log |det df/dx|       (nats, density per unit of x).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)
#: Affine couplings soft-clamp their log-scale to (-COUPLING_CLAMP, COUPLING_CLAMP) with tanh (as FrEIA does).
COUPLING_CLAMP = 2.0
#: Bisection steps of MixtureCDF1d.inverse (float64: the bracket shrinks below rounding well before).
BISECTION_STEPS = 100


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) of points z [B, D] -> [B] (nats)."""
    return (-0.5 * LOG_2PI - 0.5 * z ** 2).sum(1)


class ElementwiseAffine(nn.Module):
    """``z = exp(log_scale) * x + shift`` per coordinate: a diagonal Jacobian, logdet = sum(log_scale).

    ``initialize(x)`` sets both from a batch so that it comes out with zero mean and unit std
    per coordinate (the idea of ActNorm, notebook 03).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """x: [B, D], varying in every coordinate -> log_scale = -log std, shift = -mean / std (per coordinate)."""
        std = x.std(0)
        self.log_scale.copy_(-torch.log(std))
        self.shift.copy_(-x.mean(0) / std)

    def forward(self, x: torch.Tensor):
        z = torch.exp(self.log_scale) * x + self.shift
        return z, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.shift) * torch.exp(-self.log_scale)


class AffineCoupling(nn.Module):
    """RealNVP's affine coupling on points [B, D]: a triangular Jacobian, logdet = sum(s).

    The first ``D // 2`` coordinates ``a`` pass unchanged (with ``flip``: the last ones), the
    others become ``b * exp(s(a)) + t(a)``, with ``s = COUPLING_CLAMP * tanh(raw / COUPLING_CLAMP)``.
    Inverse: ``b = (b' - t(a)) * exp(-s(a))``: the network is only ever evaluated, never inverted.
    ``net`` = Linear(|a| -> hidden) - SiLU - Linear(hidden -> hidden) - SiLU - Linear(hidden -> 2|b|),
    the last layer zero-initialised, so the layer starts as the identity.
    """

    def __init__(self, dim: int, hidden: int = 64, flip: bool = False):
        super().__init__()
        if dim < 2:
            raise ValueError(f"AffineCoupling needs at least 2 coordinates, got {dim}")
        self.n_a = dim - dim // 2 if flip else dim // 2
        self.flip = flip
        n_b = dim - self.n_a
        self.net = nn.Sequential(nn.Linear(self.n_a, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * n_b))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _split(self, x: torch.Tensor):
        if self.flip:
            b, a = x[:, :x.shape[1] - self.n_a], x[:, x.shape[1] - self.n_a:]
        else:
            a, b = x[:, :self.n_a], x[:, self.n_a:]
        return a, b

    def _join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([b, a] if self.flip else [a, b], 1)

    def scale_shift(self, a: torch.Tensor):
        """(s, t) from the conditioning coordinates a; s soft-clamped to (-COUPLING_CLAMP, COUPLING_CLAMP)."""
        raw, t = self.net(a).chunk(2, 1)
        return COUPLING_CLAMP * torch.tanh(raw / COUPLING_CLAMP), t

    def forward(self, x: torch.Tensor):
        a, b = self._split(x)
        s, t = self.scale_shift(a)
        return self._join(a, b * torch.exp(s) + t), s.sum(1)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        a, b = self._split(z)
        s, t = self.scale_shift(a)
        return self._join(a, (b - t) * torch.exp(-s))


class ToyFlow(nn.Module):
    """A stack of invertible layers on points [B, D] with a standard normal prior on z."""

    def __init__(self, *flow_layers: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(flow_layers)

    def forward(self, x: torch.Tensor):
        """x [B, D] -> (z [B, D], logdet [B]): the log-determinants of the layers add up."""
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p_x(x) [B] (nats) = log N(f(x); 0, I) + log |det df/dx|."""
        z, logdet = self(x)
        return standard_normal_log_prob(z) + logdet

    @torch.no_grad()
    def sample(self, n: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n points [n, dim] drawn as x = f^{-1}(z), z ~ N(0, I)."""
        return self.inverse(torch.randn(n, dim, generator=generator))


def coupling_flow(dim: int, n_couplings: int, hidden: int = 64) -> ToyFlow:
    """ElementwiseAffine (call its initialize) then ``n_couplings`` couplings, alternating which half moves."""
    return ToyFlow(ElementwiseAffine(dim), *[AffineCoupling(dim, hidden, flip=bool(k % 2)) for k in range(n_couplings)])


class MixtureCDF1d(nn.Module):
    """A flow on the real line through a CDF: ``z = Phi^{-1}(F(x))``, F a mixture of K logistics.

    F(x) = sum_k pi_k sigmoid((x - mu_k) / s_k). By the change of variables the density is
    N(z) dz/dx = F'(x), the mixture density itself (Flow++ uses this map inside its couplings).
    Points x: [B, 1]. The inverse has no closed form: bisection on the monotone F.
    """

    def __init__(self, n_components: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.means = nn.Parameter(torch.linspace(-1.0, 1.0, n_components))
        self.log_scales = nn.Parameter(torch.full((n_components,), math.log(0.5)))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Means at evenly spaced quantiles of x [B, 1], scales std / K, equal weights."""
        k = self.means.numel()
        self.means.copy_(torch.quantile(x.flatten(), (torch.arange(k, dtype=x.dtype) + 0.5) / k))
        self.log_scales.fill_(math.log(float(x.std()) / k))
        self.logits.zero_()

    def _u(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.means) / torch.exp(self.log_scales)              # [B, K]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log F'(x) [B] (nats per unit of x) of points x [B, 1]."""
        u = self._u(x)
        log_pdf = -F.softplus(u) - F.softplus(-u) - self.log_scales       # log of the logistic density
        return torch.logsumexp(torch.log_softmax(self.logits, 0) + log_pdf, 1)

    def log_cdf(self, x: torch.Tensor):
        """(log F(x), log(1 - F(x))), each [B], computed without cancellation in the tails."""
        log_pi, u = torch.log_softmax(self.logits, 0), self._u(x)
        return torch.logsumexp(log_pi + F.logsigmoid(u), 1), torch.logsumexp(log_pi + F.logsigmoid(-u), 1)

    def cdf(self, x: torch.Tensor) -> torch.Tensor:
        """F(x) [B] of points x [B, 1]."""
        return torch.exp(self.log_cdf(x)[0])

    def forward(self, x: torch.Tensor):
        """x [B, 1] -> (z [B, 1], logdet [B]), logdet = log F'(x) - log N(z); |z| saturates near 13 in float32."""
        log_f, log_1mf = self.log_cdf(x)
        lower = log_f < log_1mf                                           # work in the smaller tail, for precision
        tail = torch.where(lower, log_f, log_1mf).clamp_min(math.log(torch.finfo(x.dtype).tiny))
        z_tail = torch.special.ndtri(torch.exp(tail))                     # <= 0
        z = torch.where(lower, z_tail, -z_tail).unsqueeze(1)
        return z, self.log_prob(x) - standard_normal_log_prob(z)

    @torch.no_grad()
    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, 1] -> x [B, 1] with F(x) = Phi(z): bisection in float64, in the log of the nearer tail."""
        model = {name: p.detach().double() for name, p in self.named_parameters()}
        z64 = z.double().flatten()
        lower = z64 < 0
        target = torch.special.log_ndtr(torch.where(lower, z64, -z64))    # log Phi(z), or log(1 - Phi(z))
        means, scales = model["means"], torch.exp(model["log_scales"])
        log_pi = torch.log_softmax(model["logits"], 0)
        lo = torch.full_like(z64, float((means - 60 * scales).min() - 60 * scales.max() * z64.abs().max()))
        hi = torch.full_like(z64, float((means + 60 * scales).max() + 60 * scales.max() * z64.abs().max()))
        for _ in range(BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            u = (mid[:, None] - means) / scales
            log_f = torch.logsumexp(log_pi + F.logsigmoid(u), 1)
            log_1mf = torch.logsumexp(log_pi + F.logsigmoid(-u), 1)
            below = torch.where(lower, log_f < target, log_1mf > target)  # F(mid) < Phi(z): the root is above mid
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (0.5 * (lo + hi)).to(z.dtype).unsqueeze(1)


def fit_max_likelihood(flow: nn.Module, data: torch.Tensor, steps: int, lr: float = 1e-2, batch_size: int = 512,
                       bin_width: float | None = None, generator: torch.Generator | None = None,
                       final_lr: float | None = None) -> list[float]:
    """Train `flow` (anything with ``log_prob``) by maximum likelihood with Adam on points data [N, D].

    Each step draws a minibatch; with ``bin_width`` (dequantisation) it adds uniform noise
    U[0, bin_width) to every coordinate first. With ``final_lr`` the learning rate decays
    exponentially from ``lr`` to ``final_lr`` over the steps. Returns the minibatch loss of
    every step: the mean negative log-likelihood per dimension, in nats.
    """
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    gamma = (final_lr / lr) ** (1.0 / max(steps - 1, 1)) if final_lr is not None else 1.0
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)
    losses = []
    with torch.enable_grad():
        for _ in range(steps):
            batch = data[torch.randint(0, data.shape[0], (batch_size,), generator=generator)]
            if bin_width is not None:
                batch = batch + bin_width * torch.rand(batch.shape, generator=generator, dtype=batch.dtype)
            loss = -flow.log_prob(batch).mean() / data.shape[1]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    return losses
