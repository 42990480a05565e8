"""The multi-scale normalising flow of CD-Flow (Glow's multi-scale architecture).

A ``ScaleBlock`` squeezes 2x2, applies L flow steps on 4C channels and, except in the last
block, splits the result along channels: the **first** half continues to the next scale,
the **second** half is this scale's latent, scored under a Gaussian whose mean and log-std
come from a ZeroConv2d of the kept half (Glow's learned conditional prior). The last block
keeps everything; its prior comes from a ZeroConv2d applied to a tensor of ones (the
authors' convention; rosinality's Glow uses zeros - the official fixture tells them apart).

``MultiScaleFlow(x)`` returns ``(zs, logdet, log_p)`` with the latents finest first
(z1 .. zK) and per-sample logdet and log p [B] (natural log).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._checks import check_tensor, trusted
from .layers import PAPER_HIDDEN, AffineCoupling, FlowStep, ZeroConv2d, squeeze, unsqueeze

#: The paper's configuration (Glow(in_channel=3, n_flow=8, n_block=6, affine=True, conv_lu=True)).
PAPER_N_SCALES = 6
PAPER_N_STEPS = 8
#: Trainable parameters of the paper-size model (official state dict, see the fixture).
PAPER_N_PARAMS = 60_488_496

_LOG_2PI = math.log(2 * math.pi)


#: Memory modes for training (see MultiScaleFlow.memory_mode).
MEMORY_MODES = ("off", "checkpoint", "inverse", "inverse-step")
#: The inverse-recomputation modes refuse to run when a block's input is reconstructed from its
#: output with a max error above this, relative to the input's max magnitude (measured once,
#: on the first training batch). float32 flows invert to ~1e-6; 1e-3 means something is off
#: (a coupling scale near 0, a near-singular 1x1 convolution) and gradients would be wrong.
MAX_RECONSTRUCTION_ERROR = 1e-3


class InexactInverseError(RuntimeError):
    """The flow does not invert accurately enough to recompute activations through its inverse."""


class _RecomputeThroughInverse(torch.autograd.Function):
    """Run `fwd` without storing activations; in backward, rebuild the input from the saved
    outputs with `inv`, recompute `fwd` locally and backpropagate (reversible-network style).

    fwd(x) -> tuple of tensors; inv(*outputs) -> x; `keep` says which outputs `inv` needs.
    """

    @staticmethod
    def forward(ctx, fwd, inv, keep, x, *params):
        with torch.no_grad():
            outs = fwd(x)
        ctx.fwd, ctx.inv, ctx.keep, ctx.n_params = fwd, inv, keep, len(params)
        ctx.save_for_backward(*(outs[i] for i in keep), *params)
        return outs

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        kept_outs, params = saved[: len(ctx.keep)], saved[len(ctx.keep):]
        with torch.no_grad(), trusted():
            x = ctx.inv(*kept_outs)
        x = x.detach().requires_grad_(True)
        with torch.enable_grad(), trusted():
            outs = ctx.fwd(x)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        inputs = (x, *params)
        got = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True)
        return (None, None, None, *got)


def _trusted_call(module, *args):
    with trusted():
        return module(*args)


def recompute_through_inverse(fwd, inv, keep, x, params):
    return _RecomputeThroughInverse.apply(fwd, inv, keep, x, *params)


def gaussian_log_p(z: torch.Tensor, mean: torch.Tensor, log_sd: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(z; mean, exp(log_sd)^2)."""
    return -0.5 * _LOG_2PI - log_sd - 0.5 * (z - mean) ** 2 / torch.exp(2 * log_sd)


class ScaleBlock(nn.Module):
    """Squeeze -> ``n_steps`` FlowSteps on 4C channels -> split (or not) with the learned prior.

    in_channels: C of the incoming [B, C, H, W]. With ``split``, forward returns the kept half
    [B, 2C, H/2, W/2] and the latent [B, 2C, H/2, W/2]; without, the latent is the whole
    [B, 4C, H/2, W/2] output and nothing continues.
    """

    def __init__(self, in_channels: int, n_steps: int, split: bool = True, hidden: int = PAPER_HIDDEN,
                 affine: bool = True, conv_lu: bool = True):
        super().__init__()
        self.in_channels, self.split = in_channels, split
        width = in_channels * 4
        self.flows = nn.ModuleList(FlowStep(width, hidden, affine, conv_lu) for _ in range(n_steps))
        self.prior = ZeroConv2d(in_channels * 2, in_channels * 4) if split else ZeroConv2d(width, width * 2)

    @property
    def out_channels(self) -> int:
        """Channels passed to the next block (0 for the last block)."""
        return self.in_channels * 2 if self.split else 0

    def prior_params(self, kept: torch.Tensor | None, z: torch.Tensor):
        """(mean, log_sd) of this block's latent `z`, given the kept half (split blocks)."""
        source = kept if self.split else torch.ones_like(z)
        return self.prior(source).chunk(2, 1)

    def _params(self):
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, x: torch.Tensor, step_recompute: bool = False):
        """x: [B, C, H, W] -> (kept or None, logdet [B], log_p [B], z).

        With ``step_recompute`` each FlowStep stores only its output and rebuilds its input
        through its inverse in the backward pass (see MultiScaleFlow.memory_mode).
        """
        out = squeeze(x)
        logdet = x.new_zeros(x.shape[0])
        for step in self.flows:
            if step_recompute and step.actnorm.is_initialized():
                out, det = recompute_through_inverse(step, step.inverse, (0,), out,
                                                     [p for p in step.parameters() if p.requires_grad])
            else:
                out, det = step(out)
            logdet = logdet + det
        kept, z = out.chunk(2, 1) if self.split else (None, out)
        mean, log_sd = self.prior_params(kept, z)
        log_p = gaussian_log_p(z, mean, log_sd).flatten(1).sum(1)
        return kept, logdet, log_p, z

    def forward_recompute(self, x: torch.Tensor):
        """`forward` that stores only the block's outputs and recomputes through the inverse."""
        if self.split:
            kept, logdet, log_p, z = recompute_through_inverse(
                self.forward, lambda k, z: self.inverse(k, z), (0, 3), x, self._params())
            return kept, logdet, log_p, z
        logdet, log_p, z = recompute_through_inverse(
            lambda v: self.forward(v)[1:], lambda z: self.inverse(None, z), (2,), x, self._params())
        return None, logdet, log_p, z

    def inverse(self, kept: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        """(kept half, latent) -> this block's input [B, C, 2H, 2W]."""
        out = torch.cat([kept, z], 1) if self.split else z
        for step in reversed(self.flows):
            out = step.inverse(out)
        return unsqueeze(out)


class MultiScaleFlow(nn.Module):
    """K ScaleBlocks; ``forward(x) -> (zs, logdet, log_p)``, ``inverse(zs) -> x``.

    x: [B, C, H, W] with H, W divisible by 2^K. Latent z_k (k = 1 .. K, finest first) has
    C * 2^k channels at H / 2^k x W / 2^k, except the unsplit last one, which has C * 2^(K+1)
    (for C = 3, K = 6: 6, 12, 24, 48, 96, 384 channels). Their sizes sum to C * H * W.
    """

    def __init__(self, in_channels: int = 3, n_scales: int = PAPER_N_SCALES, n_steps: int = PAPER_N_STEPS,
                 hidden: int = PAPER_HIDDEN, affine: bool = True, conv_lu: bool = True):
        super().__init__()
        if n_scales < 1 or n_steps < 1 or hidden < 1:
            raise ValueError(f"n_scales, n_steps and hidden must be positive, got {n_scales}, {n_steps}, {hidden}")
        self.config = dict(in_channels=in_channels, n_scales=n_scales, n_steps=n_steps, hidden=hidden,
                           affine=affine, conv_lu=conv_lu)
        blocks, channels = [], in_channels
        for k in range(n_scales):
            last = k == n_scales - 1
            blocks.append(ScaleBlock(channels, n_steps, split=not last, hidden=hidden, affine=affine, conv_lu=conv_lu))
            channels *= 2
        self.blocks = nn.ModuleList(blocks)
        #: How training (train mode, gradients on) stores activations:
        #: "off" ordinary autograd; "checkpoint" torch.utils.checkpoint per block (stores the
        #: block input, recomputes the block); "inverse" stores each block's outputs only and
        #: rebuilds its input through the exact inverse; "inverse-step" the same per FlowStep.
        #: All give the same gradients; evaluation is unaffected.
        self.memory_mode = "off"
        self.reconstruction_error: float | None = None

    @property
    def coupling_precision(self) -> str:
        return next(m.precision for m in self.modules() if isinstance(m, AffineCoupling))

    @coupling_precision.setter
    def coupling_precision(self, value: str) -> None:
        """"off" (float32, the authors' numerics) or "bf16" (coupling networks only under bf16 autocast)."""
        if value not in ("off", "bf16"):
            raise ValueError(f"coupling_precision must be 'off' or 'bf16', got {value!r}")
        for m in self.modules():
            if isinstance(m, AffineCoupling):
                m.precision = value

    def _flag(self, kind, attr):
        return next(getattr(m, attr) for m in self.modules() if isinstance(m, kind))

    def _set_flag(self, kind, attr, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"{attr} must be True or False, got {value!r}")
        for m in self.modules():
            if isinstance(m, kind):
                setattr(m, attr, value)

    #: Speed flags (default False: the authors' numerics; see FlowStep and AffineCoupling). Each
    #: computes the same function up to float rounding: fold ActNorm into the 1x1 convolution
    #: in eval mode; run the coupling networks on channels-last tensors; torch.compile them.
    fold_actnorm = property(lambda self: self._flag(FlowStep, "fold_actnorm"),
                            lambda self, v: self._set_flag(FlowStep, "fold_actnorm", v))
    channels_last = property(lambda self: self._flag(AffineCoupling, "channels_last"),
                             lambda self, v: self._set_flag(AffineCoupling, "channels_last", v))
    compile_couplings = property(lambda self: self._flag(AffineCoupling, "use_compile"),
                                 lambda self, v: self._set_flag(AffineCoupling, "use_compile", v))

    #: The speed flags above, by name (the benchmarks make one row per flag).
    SPEED_FLAGS = ("fold_actnorm", "channels_last", "compile_couplings")

    def __setattr__(self, name, value):
        if name == "memory_mode" and value not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {MEMORY_MODES}, got {value!r}")
        super().__setattr__(name, value)

    @torch.no_grad()
    def check_reconstruction(self, x: torch.Tensor) -> float:
        """Max relative error of rebuilding every block's input from its outputs; raises
        InexactInverseError above MAX_RECONSTRUCTION_ERROR."""
        worst, out = 0.0, x
        with trusted():
            for i, block in enumerate(self.blocks):
                kept, _, _, z = block(out)
                rec = block.inverse(kept, z)
                err = ((rec - out).abs().max() / out.abs().max().clamp_min(1e-12)).item()
                if not err <= MAX_RECONSTRUCTION_ERROR:
                    raise InexactInverseError(
                        f"block {i + 1} rebuilds its input with a relative error of {err:.3g} "
                        f"(> {MAX_RECONSTRUCTION_ERROR:g}); inverse recomputation would give wrong gradients. "
                        "Train with memory_mode='checkpoint' or 'off'.")
                worst, out = max(worst, err), kept
        self.reconstruction_error = worst
        return worst

    @property
    def n_scales(self) -> int:
        return len(self.blocks)

    def latent_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """[(C, H, W)] of z1 .. zK for an input of height x width."""
        shapes, c, h, w = [], self.config["in_channels"], height, width
        for block in self.blocks:
            h, w = h // 2, w // 2
            shapes.append((c * 2 if block.split else c * 4, h, w))
            c *= 2
        return shapes

    def check_input(self, x: torch.Tensor, name: str = "input") -> None:
        check_tensor(x, name, channels=self.config["in_channels"])
        m = 2 ** self.n_scales
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"{name}: height and width must be divisible by 2^{self.n_scales} = {m}, "
                             f"got {x.shape[-2]} x {x.shape[-1]}")

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        zs, logdet, log_p = [], x.new_zeros(x.shape[0]), x.new_zeros(x.shape[0])
        mode = self.memory_mode if self.training and torch.is_grad_enabled() else "off"
        if mode.startswith("inverse") and self.reconstruction_error is None:
            if not all(m.is_initialized() for m in self.modules() if hasattr(m, "is_initialized")):
                self.initialize(x)
            self.check_reconstruction(x)
        out = x
        with trusted():
            for block in self.blocks:
                if mode == "checkpoint":
                    out, det, lp, z = checkpoint(_trusted_call, block, out, use_reentrant=False)
                elif mode == "inverse":
                    out, det, lp, z = block.forward_recompute(out)
                elif mode == "inverse-step":
                    out, det, lp, z = block(out, step_recompute=True)
                else:
                    out, det, lp, z = block(out)
                zs.append(z)
                logdet, log_p = logdet + det, log_p + lp
        return zs, logdet, log_p

    def inverse(self, zs) -> torch.Tensor:
        """Latents z1 .. zK (finest first) -> x [B, C, H, W]."""
        if len(zs) != self.n_scales:
            raise ValueError(f"expected {self.n_scales} latents (finest first), got {len(zs)}")
        for i, z in enumerate(zs):
            check_tensor(z, f"latent z{i + 1}")
        out = None
        with trusted():
            for block, z in zip(reversed(self.blocks), reversed(list(zs))):
                out = block.inverse(out, z)
        return out

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Run ActNorm's data-dependent initialisation on the batch `x` (once, before any wrapping)."""
        self.forward(x)
