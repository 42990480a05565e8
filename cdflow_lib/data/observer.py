"""The simulated observer: the labels of the synthetic pairs. They are synthetic, not human.

SPCD's labels are mean opinion scores of 20 observers. Without access to those people, the
synthetic pairs get a documented, deterministic stand-in, computed on the **aligned** pair
(so misalignment never changes a label: a good CD measure must learn to ignore it):

1. S-CIELAB (Zhang & Wandell 1996): both images are filtered in an opponent colour space
   with the eye's spatial sensitivity, then compared per pixel with CIEDE2000
   (`cdflow_lib.colour.scielab_delta_e`). The viewing geometry is fixed in visual angle:
   whatever its pixel count, the image is shown 30 cm wide at 60 cm
   (`colour.samples_per_degree_for_display(width)`), so a photograph gets about the same
   label at 128 px as at 1024 px.
2. Pooling: ``raw = (1 - POOL_WEIGHT) * mean + POOL_WEIGHT * q95`` of the ΔE00 map:
   observers judge by the most visible region too, so a strong local tint counts for more
   than its area share.
3. Mapping onto SPCD's ΔV scale, monotone and zero at zero:
   ``dv = DV_CEILING * tanh(OBSERVER_GAIN * raw ** OBSERVER_EXPONENT * exp(NOISE_LOG_SD * z) / DV_CEILING)``
   with z a standard normal drawn from the pair's seed (observer noise, multiplicative as
   rating noise grows with the difference; z = 0 without a seed). The tanh keeps every
   label below SPCD's largest ΔV. The compressive power law (a Stevens-like magnitude
   scale) is steep near zero: one 8-bit level of change everywhere (pooled ΔE00 about
   0.35) already gets ΔV about 1.6. That matches SPCD's scale, which has no labels near 0
   (its 1 % quantile is 1.97); identical images get exactly 0.
4. Calibration: OBSERVER_GAIN and OBSERVER_EXPONENT were fitted with `fit_observer_mapping`
   so that the labels of the training pairs of the ``photos`` recipe
   (`SyntheticPairs("train", size=341, pairs_per_image=30, seed=0)`: 4,020 pairs of 134
   photographs, stored at the size the training augmentation starts from) have the
   quantiles of SPCD's labels (1 % .. 99 %, from the authors' label files); notebook
   09_data repeats the fit and compares the distributions.

For a fixed noise seed the label grows strictly with the pooled ΔE00.
"""
from __future__ import annotations

import numpy as np
import torch

from ..colour import samples_per_degree_for_display, scielab_delta_e
from .spcd import SPCD_DV_RANGE

#: Pooling of the S-CIELAB ΔE00 map: weight of its POOL_PERCENTILE quantile against its mean.
POOL_PERCENTILE = 0.95
POOL_WEIGHT = 0.5
#: The labels saturate below SPCD's largest ΔV.
DV_CEILING = SPCD_DV_RANGE[1]
#: Mapping pooled ΔE00 -> ΔV (fitted on the `photos` recipe's training pairs, see the module docstring).
OBSERVER_GAIN = 2.487
OBSERVER_EXPONENT = 0.4992
#: Standard deviation of the multiplicative observer noise, in natural-log units (about 10 %).
NOISE_LOG_SD = 0.1


def _as_batch(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (x.unsqueeze(0), True) if isinstance(x, torch.Tensor) and x.dim() == 3 else (x, False)


def pooled_delta_e(x_ref: torch.Tensor, y_test_aligned: torch.Tensor) -> torch.Tensor:
    """Pooled S-CIELAB CIEDE2000 of aligned pairs: [B] (ΔE00 units).

    x_ref, y_test_aligned: [B, 3, H, W] sRGB in [0, 1], same shape (the viewing geometry
    follows the width W, see the module docstring).
    """
    x, _ = _as_batch(x_ref)
    y, _ = _as_batch(y_test_aligned)
    de = scielab_delta_e(x, y, spd=samples_per_degree_for_display(int(x.shape[-1])), formula="2000")
    flat = de.flatten(1).double()
    return ((1 - POOL_WEIGHT) * flat.mean(1) + POOL_WEIGHT * torch.quantile(flat, POOL_PERCENTILE, dim=1)).float()


def observer_noise(seed: int | None, n: int = 1) -> torch.Tensor:
    """[n] standard normal draws of the observer noise for `seed` (zeros when seed is None)."""
    if seed is None:
        return torch.zeros(n, dtype=torch.float64)
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(n))


def _dv(raw: torch.Tensor, z: torch.Tensor | None, gain: float, exponent: float) -> torch.Tensor:
    """The map of `dv_from_pooled` in float64."""
    raw = torch.as_tensor(raw, dtype=torch.float64)
    if bool((raw < 0).any()):
        raise ValueError("pooled colour differences must be non-negative")
    z = torch.zeros_like(raw) if z is None else torch.as_tensor(z, dtype=torch.float64)
    return DV_CEILING * torch.tanh(gain * raw.pow(exponent) * torch.exp(NOISE_LOG_SD * z) / DV_CEILING)


def dv_from_pooled(raw: torch.Tensor, z: torch.Tensor | None = None, gain: float = OBSERVER_GAIN,
                   exponent: float = OBSERVER_EXPONENT) -> torch.Tensor:
    """The monotone map pooled ΔE00 -> ΔV (see the module docstring). raw, z: [B] -> [B] float32."""
    return _dv(raw, z, gain, exponent).float()


def simulated_observer(x_ref: torch.Tensor, y_test_aligned: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """Synthetic ΔV of aligned pairs (NOT human data): [B] float32, or a scalar for [3, H, W] inputs.

    x_ref, y_test_aligned: [B, 3, H, W] or [3, H, W] sRGB in [0, 1], the test image *before*
    any misalignment. seed: the observer-noise seed (one draw per pair of the batch, in
    order); None gives the noise-free label. Deterministic: the same inputs and seed give
    the same labels.
    """
    x, single = _as_batch(x_ref)
    y, _ = _as_batch(y_test_aligned)
    dv = dv_from_pooled(pooled_delta_e(x, y), observer_noise(seed, x.shape[0]))
    return dv[0] if single else dv


def fit_observer_mapping(raw: torch.Tensor, z: torch.Tensor, target_quantiles: dict) -> tuple[float, float]:
    """(gain, exponent) so that dv_from_pooled(raw, z) has the target quantiles (least squares in log ΔV).

    raw: [N] pooled ΔE00 of a pair set; z: [N] their noise draws; target_quantiles:
    {level: ΔV} for levels strictly inside (0, 1) (e.g. SPCD's from its label statistics).
    """
    from scipy.optimize import least_squares

    targets = {float(q): float(v) for q, v in target_quantiles.items() if 0.0 < float(q) < 1.0}
    if len(targets) < 2:
        raise ValueError(f"need at least two target quantiles strictly inside (0, 1), got {sorted(target_quantiles)}")
    levels = sorted(targets)
    log_target = np.log([targets[q] for q in levels])

    def residual(p):
        dv = _dv(raw, z, gain=float(np.exp(p[0])), exponent=float(p[1])).numpy()
        return np.log(np.quantile(dv, levels)) - log_target

    fit = least_squares(residual, x0=[0.0, 1.0], bounds=([-5.0, 0.2], [5.0, 3.0]))
    return float(np.exp(fit.x[0])), float(fit.x[1])
