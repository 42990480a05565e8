"""The invertible building blocks of CD-Flow, with the authors' conventions.

Direction: ``forward`` maps image -> latent (the normalising direction) and returns
``(y, logdet)`` with ``logdet`` of shape [B] (log |det dy/dx| per sample, natural log);
``inverse`` maps back. All layers act on [B, C, H, W] float tensors.

Precision: the invertible arithmetic (ActNorm, the 1x1 convolution with its LU weight and
inverse, the coupling's affine update and log-determinant) always runs in the input's own
float precision under `full_precision` (TF32 off, autocast off), whatever the global flags,
so that a block's inverse rebuilds its input to float rounding even when the coupling
networks - the only parts allowed to - run in TF32 or bfloat16.

The conventions follow the authors' code (a Glow in the structure of rosinality's
glow-pytorch, see DESIGN.md section 4); parameter and buffer names are the official ones so
that the released weights load without edits.
"""
from __future__ import annotations

import contextlib
import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_tensor

#: ActNorm's initial scale is 1 / (std + ACTNORM_EPS) (authors' code).
ACTNORM_EPS = 1e-6
#: Affine coupling scale: s = sigmoid(log_s + COUPLING_SCALE_SHIFT), so s = sigmoid(2) ~ 0.88 at init.
COUPLING_SCALE_SHIFT = 2.0
#: ZeroConv2d multiplies its output by exp(ZEROCONV_LOGSCALE_FACTOR * scale).
ZEROCONV_LOGSCALE_FACTOR = 3.0
#: Std of the normal initialisation of the coupling network's first two convolutions.
COUPLING_INIT_STD = 0.05
#: Width of the coupling network in the paper.
PAPER_HIDDEN = 512


@contextlib.contextmanager
def full_precision(device_type: str):
    """Run the enclosed operations in full float precision: TF32 off for cuBLAS and cuDNN, and
    autocast off for `device_type` ("cuda", "cpu", ...). The global flags are restored on exit."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def _exact(method):
    """Decorator: run a layer method ``method(self, x, ...)`` under `full_precision` on x's device."""
    @functools.wraps(method)
    def wrapper(self, x, *args, **kwargs):
        with full_precision(x.device.type):
            return method(self, x, *args, **kwargs)
    return wrapper


def _sum_logdets(first: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
    """first + rest[0] + ... in full precision (left to right, the reference order)."""
    with full_precision(first.device.type):
        for ld in rest:
            first = first + ld
        return first


def _spatial_logdet(per_pixel: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """H * W * per_pixel, broadcast to shape [B] (per-pixel layers have one logdet for all samples)."""
    h, w = x.shape[-2:]
    return (h * w * per_pixel).expand(x.shape[0])


class ActNorm(nn.Module):
    """Per-channel affine normalisation: ``y = scale * (x + loc)``.

    Data-dependent initialisation on the first forward pass (in training or eval mode, as
    the authors' code does): ``loc = -mean``, ``scale = 1 / (std + 1e-6)`` with the unbiased
    std over batch and space, so the first batch leaves zero-mean, unit-std channels. The
    registered buffer ``initialized`` (uint8) records that this happened and travels with
    the state dict. logdet = H * W * sum(log |scale|).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self._known_initialized = False  # mirrors the buffer to avoid a device sync per call

    def _load_from_state_dict(self, *args, **kwargs):
        self._known_initialized = False
        super()._load_from_state_dict(*args, **kwargs)

    def is_initialized(self) -> bool:
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized.item())
        return self._known_initialized

    @torch.no_grad()
    @_exact
    def initialize(self, x: torch.Tensor) -> None:
        """Set loc and scale from the batch `x` [B, C, H, W] and mark the layer initialised."""
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        mean = flat.mean(1).view(1, -1, 1, 1)
        std = flat.std(1).view(1, -1, 1, 1)
        self.loc.copy_(-mean)
        self.scale.copy_(1.0 / (std + ACTNORM_EPS))
        self.initialized.fill_(1)
        self._known_initialized = True

    def logdet(self, x: torch.Tensor) -> torch.Tensor:
        """H * W * sum(log |scale|) as [B] for an input shaped like x."""
        return _spatial_logdet(torch.log(torch.abs(self.scale)).sum(), x)

    @_exact
    def forward(self, x: torch.Tensor):
        check_tensor(x, "ActNorm input", channels=self.channels)
        if not self.is_initialized():
            self.initialize(x)
        return self.scale * (x + self.loc), self.logdet(x)

    @_exact
    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_tensor(y, "ActNorm inverse input", channels=self.channels)
        return y / self.scale - self.loc


def _random_rotation(channels: int) -> torch.Tensor:
    """An orthogonal matrix from the QR decomposition of a Gaussian matrix (Glow's init)."""
    q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
    return q


class InvConv2d(nn.Module):
    """Invertible 1x1 convolution with a free weight matrix (for teaching).

    ``y[:, i] = sum_j W[i, j] x[:, j]`` at every pixel: a learned linear colour space.
    logdet = H * W * log |det W|, computed with ``slogdet`` (O(C^3) per call - the reason
    for the LU parametrisation below).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(_random_rotation(channels).float().view(channels, channels, 1, 1))

    def matrix(self) -> torch.Tensor:
        return self.weight.view(self.channels, self.channels)

    def matrices(self, need_inverse: bool = False):
        """(W, W^-1 or None) as [C, C] matrices."""
        w = self.matrix()
        return w, (torch.linalg.inv(w) if need_inverse else None)

    def logdet(self, x: torch.Tensor) -> torch.Tensor:
        return _spatial_logdet(torch.linalg.slogdet(self.matrix())[1], x)

    @_exact
    def forward(self, x: torch.Tensor):
        check_tensor(x, "InvConv2d input", channels=self.channels)
        return F.conv2d(x, self.weight), self.logdet(x)

    @_exact
    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_tensor(y, "InvConv2d inverse input", channels=self.channels)
        w_inv = torch.linalg.inv(self.matrix())
        return F.conv2d(y, w_inv.view(self.channels, self.channels, 1, 1))


class InvConv2dLU(nn.Module):
    """Invertible 1x1 convolution in LU form (Glow): ``W = P (L*mask_l + I) (U*mask_u + diag(sign * exp(w_s)))``.

    P (permutation), the masks, the identity and the signs are buffers; ``w_l``, ``w_u`` and
    the log-magnitudes ``w_s`` of U's diagonal are parameters. logdet = H * W * sum(w_s),
    O(C) instead of O(C^3). Initialised from the QR of a Gaussian matrix, then LU-factorised.

    In eval mode, when no gradient with respect to the weights is needed, W and W^-1 are
    computed once and cached until a parameter changes (in-place updates bump the tensors'
    version counters, which key the cache).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        w_p, w_l, w_u = torch.linalg.lu(_random_rotation(channels))
        w_s = torch.diagonal(w_u)
        u_mask = torch.triu(torch.ones(channels, channels), 1)
        self.register_buffer("w_p", w_p.float())
        self.register_buffer("u_mask", u_mask)
        self.register_buffer("l_mask", u_mask.T.contiguous())
        self.register_buffer("s_sign", torch.sign(w_s).float())
        self.register_buffer("l_eye", torch.eye(channels))
        self.w_l = nn.Parameter(w_l.float())
        self.w_s = nn.Parameter(torch.log(torch.abs(w_s)).float())
        self.w_u = nn.Parameter(torch.triu(w_u, 1).float())
        self._cache: dict = {}

    def compute_weight(self) -> torch.Tensor:
        """The [C, C] weight matrix P L U (one evaluation per call, in full precision)."""
        with full_precision(self.w_s.device.type):
            return self._plu()

    def _plu(self) -> torch.Tensor:
        lower = self.w_l * self.l_mask + self.l_eye
        upper = self.w_u * self.u_mask + torch.diag(self.s_sign * torch.exp(self.w_s))
        return self.w_p @ lower @ upper

    def _cache_key(self):
        return tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in (self.w_l, self.w_s, self.w_u, self.w_p))

    def _cacheable(self) -> bool:
        return not self.training and not (torch.is_grad_enabled() and self.w_s.requires_grad)

    def matrices(self, need_inverse: bool = False):
        """(W, W^-1 or None), cached when safe (eval mode, no gradient wanted for the weights)."""
        with full_precision(self.w_s.device.type):
            return self._matrices(need_inverse)

    def _matrices(self, need_inverse: bool):
        if not self._cacheable():
            w = self._plu()
            return w, (torch.linalg.inv(w) if need_inverse else None)
        key = self._cache_key()
        if self._cache.get("key") != key:
            self._cache = {"key": key}
        if "w" not in self._cache:
            with torch.no_grad():
                self._cache["w"] = self._plu()
        if need_inverse and "w_inv" not in self._cache:
            with torch.no_grad():
                self._cache["w_inv"] = torch.linalg.inv(self._cache["w"])
        return self._cache["w"], self._cache.get("w_inv")

    def logdet(self, x: torch.Tensor) -> torch.Tensor:
        return _spatial_logdet(self.w_s.sum(), x)

    @_exact
    def forward(self, x: torch.Tensor):
        check_tensor(x, "InvConv2dLU input", channels=self.channels)
        w, _ = self.matrices()
        return F.conv2d(x, w.view(self.channels, self.channels, 1, 1)), self.logdet(x)

    @_exact
    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_tensor(y, "InvConv2dLU inverse input", channels=self.channels)
        _, w_inv = self.matrices(need_inverse=True)
        return F.conv2d(y, w_inv.view(self.channels, self.channels, 1, 1))


class ZeroConv2d(nn.Module):
    """3x3 convolution that starts as the zero map (Glow).

    The input is padded with the constant **1** (not 0), convolved without padding, and the
    output multiplied by ``exp(3 * scale)``; weights, bias and ``scale`` start at zero. Not
    invertible: used inside couplings and priors.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=0)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(F.pad(x, [1, 1, 1, 1], value=1.0))
        return out * torch.exp(self.scale * ZEROCONV_LOGSCALE_FACTOR)


class CompileFallbackWarning(UserWarning):
    """torch.compile of the coupling networks is unavailable or failed; they run eagerly."""


_compile_warned = False


def _compile_failed(exc: Exception) -> None:
    global _compile_warned
    if not _compile_warned:
        _compile_warned = True
        warnings.warn(f"torch.compile of the coupling networks failed ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); running them eagerly",
                      CompileFallbackWarning, stacklevel=4)


class AffineCoupling(nn.Module):
    """Affine (or additive) coupling layer with the authors' formula.

    ``a, b = x.chunk(2, 1)``; ``log_s, t = net(a).chunk(2, 1)``; ``s = sigmoid(log_s + 2)``;
    ``b' = (b + t) * s`` (shift, then scale); ``y = cat(a, b')``; logdet = sum log s.
    Inverse: ``b = b' / s - t``. With ``affine=False``: ``b' = b + net(a)``, logdet = 0.
    ``net`` = Conv3x3(C/2 -> hidden) - ReLU - Conv1x1(hidden -> hidden) - ReLU - ZeroConv2d(hidden -> C or C/2).
    """

    def __init__(self, channels: int, hidden: int = PAPER_HIDDEN, affine: bool = True):
        super().__init__()
        if channels % 2:
            raise ValueError(f"AffineCoupling needs an even number of channels, got {channels}")
        self.channels, self.affine = channels, affine
        self.net = nn.Sequential(
            nn.Conv2d(channels // 2, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            ZeroConv2d(hidden, channels if affine else channels // 2),
        )
        for conv in (self.net[0], self.net[2]):
            nn.init.normal_(conv.weight, 0.0, COUPLING_INIT_STD)
            nn.init.zeros_(conv.bias)
        #: "off" (the input's precision, the authors' numerics) or "bf16": the network alone runs
        #: under bfloat16 autocast. Either way s, t and the affine update run in full precision.
        self.precision = "off"
        #: Speed flags of the network (default off, the reference path): run it on channels-last
        #: tensors; run it through torch.compile (falls back to eager, warning once, if compile
        #: is unavailable or fails). Both compute the same function up to float rounding.
        self.channels_last = False
        self.use_compile = False

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_compiled_net", None)  # a compiled network is rebuilt on first use (copies, pickles)
        return state

    def _compiled(self):
        """torch.compile(self.net), built on first use; None once compile has failed."""
        if "_compiled_net" not in self.__dict__:
            try:
                compiled = torch.compile(self.net)
            except Exception as exc:  # compile unavailable here (platform, Python version)
                _compile_failed(exc)
                compiled = None
            object.__setattr__(self, "_compiled_net", compiled)  # not a submodule: not in the state dict
        return self.__dict__["_compiled_net"]

    def _run_net(self, a: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            a = a.contiguous(memory_format=torch.channels_last)
        net = self._compiled() if self.use_compile else None
        if net is not None:
            try:
                return net(a)
            except Exception as exc:  # compile failed at first call (no compiler, unsupported op)
                _compile_failed(exc)
                object.__setattr__(self, "_compiled_net", None)
        return self.net(a)

    def network(self, a: torch.Tensor) -> torch.Tensor:
        """net(a) in the coupling precision, returned in a's dtype: [B, C (C/2 additive), H, W].

        The one part of the layer that may run in TF32 or bfloat16 (under the global flags,
        an enclosing autocast, or ``precision="bf16"``); its output is a function of `a` alone,
        so the inverse, which sees the same `a`, recomputes the same s and t.
        """
        if self.precision == "bf16":
            with torch.autocast(device_type=a.device.type, dtype=torch.bfloat16):
                h = self._run_net(a)
        else:
            h = self._run_net(a)
        return h.to(a.dtype)

    @_exact
    def _scale_shift(self, h: torch.Tensor):
        if not self.affine:
            return None, h
        log_s, t = h.chunk(2, 1)
        return torch.sigmoid(log_s + COUPLING_SCALE_SHIFT), t

    def scale_shift(self, a: torch.Tensor):
        """(s, t) computed from the conditioning half `a`; s is None for the additive variant."""
        return self._scale_shift(self.network(a))

    @_exact
    def _update(self, a, b, s, t):
        """(cat(a, b'), logdet [B]) with b' = (b + t) * s (or b + t), in full precision."""
        if s is None:
            return torch.cat([a, b + t], 1), a.new_zeros(a.shape[0])
        return torch.cat([a, (b + t) * s], 1), torch.log(s).flatten(1).sum(1)

    @_exact
    def _inverse_update(self, a, b, s, t):
        return torch.cat([a, b - t if s is None else b / s - t], 1)

    def forward(self, x: torch.Tensor):
        check_tensor(x, "AffineCoupling input", channels=self.channels)
        a, b = x.chunk(2, 1)
        return self._update(a, b, *self.scale_shift(a))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_tensor(y, "AffineCoupling inverse input", channels=self.channels)
        a, b = y.chunk(2, 1)
        return self._inverse_update(a, b, *self.scale_shift(a))


class FlowStep(nn.Module):
    """One Glow step: ActNorm -> invertible 1x1 convolution (LU or plain) -> coupling."""

    def __init__(self, channels: int, hidden: int = PAPER_HIDDEN, affine: bool = True, conv_lu: bool = True):
        super().__init__()
        self.channels = channels
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv2dLU(channels) if conv_lu else InvConv2d(channels)
        self.coupling = AffineCoupling(channels, hidden, affine)
        #: Speed flag (default off, the reference path): in eval mode, once ActNorm is
        #: initialised, fold ActNorm into the 1x1 convolution - one convolution with weight
        #: W' = W diag(scale) and bias W diag(scale) loc (inverse: diag(1/scale) W^-1, bias -loc).
        #: Same function and log-det up to float rounding.
        self.fold_actnorm = False

    def _folds(self) -> bool:
        return self.fold_actnorm and not self.training and self.actnorm.is_initialized()

    @_exact
    def folded(self, x: torch.Tensor):
        """invconv(actnorm(x)) as one convolution: (out, actnorm logdet [B], invconv logdet [B])."""
        w, _ = self.invconv.matrices()
        scale, loc = self.actnorm.scale.view(1, -1), self.actnorm.loc.view(-1)
        w_folded = w * scale
        out = F.conv2d(x, w_folded.view(self.channels, self.channels, 1, 1), w_folded @ loc)
        return out, self.actnorm.logdet(x), self.invconv.logdet(x)

    @_exact
    def folded_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """actnorm.inverse(invconv.inverse(y)) as one convolution."""
        _, w_inv = self.invconv.matrices(need_inverse=True)
        w_folded = w_inv / self.actnorm.scale.view(-1, 1)
        return F.conv2d(y, w_folded.view(self.channels, self.channels, 1, 1), -self.actnorm.loc.view(-1))

    def forward(self, x: torch.Tensor):
        check_tensor(x, "FlowStep input", channels=self.channels)
        if self._folds():
            out, ld_norm, ld_conv = self.folded(x)
        else:
            out, ld_norm = self.actnorm(x)
            out, ld_conv = self.invconv(out)
        out, ld_coupling = self.coupling(out)
        return out, _sum_logdets(ld_norm, ld_conv, ld_coupling)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_tensor(y, "FlowStep inverse input", channels=self.channels)
        out = self.coupling.inverse(y)
        if self._folds():
            return self.folded_inverse(out)
        return self.actnorm.inverse(self.invconv.inverse(out))


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """2x2 space-to-depth: [B, C, H, W] -> [B, 4C, H/2, W/2], channel index ``c*4 + dy*2 + dx``."""
    check_tensor(x, "squeeze input", finite=False)
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze needs an even height and width, got {h} x {w}")
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze(z: torch.Tensor) -> torch.Tensor:
    """Inverse of `squeeze`: [B, 4C, H, W] -> [B, C, 2H, 2W]."""
    check_tensor(z, "unsqueeze input", finite=False)
    b, c, h, w = z.shape
    if c % 4:
        raise ValueError(f"unsqueeze needs a channel count divisible by 4, got {c}")
    z = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c // 4, h * 2, w * 2)
