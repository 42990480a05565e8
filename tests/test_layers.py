"""Every invertible layer passes one harness: exact inverse, cancelling log-determinants,
and log-determinants equal to a brute-force Jacobian."""
import pytest
import torch

from cdflow_lib import layers
from cdflow_lib._checks import trusted


def perturb(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Move every parameter off its initial value (zero-initialised convolutions included)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


class Squeeze(torch.nn.Module):
    """squeeze / unsqueeze as a layer (volume preserving: logdet 0)."""

    def forward(self, x):
        return layers.squeeze(x), x.new_zeros(x.shape[0])

    def inverse(self, y):
        return layers.unsqueeze(y)


C = 4
FACTORIES = {
    "actnorm": lambda: layers.ActNorm(C),
    "invconv": lambda: layers.InvConv2d(C),
    "invconv_lu": lambda: layers.InvConv2dLU(C),
    "coupling_affine": lambda: layers.AffineCoupling(C, hidden=8, affine=True),
    "coupling_additive": lambda: layers.AffineCoupling(C, hidden=8, affine=False),
    "flowstep": lambda: layers.FlowStep(C, hidden=8),
    "flowstep_plain_additive": lambda: layers.FlowStep(C, hidden=8, affine=False, conv_lu=False),
    "squeeze": Squeeze,
}


def make(name, dtype):
    torch.manual_seed(0)
    layer = perturb(FACTORIES[name]()).to(dtype)
    x0 = torch.randn(5, C, 6, 6, dtype=dtype)
    layer(x0)  # ActNorm data-dependent initialisation happens here
    perturb(layer, 0.05)  # and parameters move off the initialisation afterwards
    return layer


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_inverse_recovers_input(name, dtype, tol):
    layer = make(name, dtype)
    x = torch.randn(3, C, 6, 6, dtype=dtype)
    with torch.no_grad():
        y, logdet = layer(x)
        x_rec = layer.inverse(y)
    assert y.dtype == dtype and logdet.shape == (3,) and logdet.dtype == dtype
    assert (x_rec - x).abs().max().item() < tol


@pytest.mark.parametrize("name", list(FACTORIES))
def test_inverse_logdet_cancels_forward(name):
    """log|det J_inverse| at y equals -log|det J_forward| at x (brute force for the inverse)."""
    layer = make(name, torch.float64)
    x = torch.randn(1, C, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        y, logdet = layer(x)
    j_inv = torch.autograd.functional.jacobian(lambda v: layer.inverse(v), y).reshape(x.numel(), y.numel())
    assert torch.linalg.slogdet(j_inv)[1].item() == pytest.approx(-logdet.item(), abs=1e-9)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_logdet_matches_bruteforce_jacobian(name):
    layer = make(name, torch.float64)
    x = torch.randn(2, C, 2, 2, dtype=torch.float64)
    _, logdet = layer(x)
    for i in range(2):
        xi = x[i:i + 1]
        jac = torch.autograd.functional.jacobian(lambda v: layer(v)[0], xi).reshape(xi.numel(), xi.numel())
        assert torch.linalg.slogdet(jac)[1].item() == pytest.approx(logdet[i].item(), abs=1e-9)


def test_actnorm_initialisation_standardises_first_batch():
    layer = layers.ActNorm(3)
    x = torch.randn(8, 3, 5, 5) * torch.tensor([2.0, 0.5, 7.0]).view(1, 3, 1, 1) + torch.tensor([1.0, -3.0, 0.2]).view(1, 3, 1, 1)
    y, _ = layer(x)
    flat = y.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(flat.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(flat.std(1), torch.ones(3), atol=1e-4)
    assert layer.initialized.item() == 1
    # a second batch does not re-initialise
    loc = layer.loc.detach().clone()
    layer(torch.randn(8, 3, 5, 5) + 10)
    assert torch.equal(layer.loc.detach(), loc)


def test_actnorm_flag_and_lu_buffers_survive_state_dict_and_to():
    step = layers.FlowStep(4, hidden=8)
    step(torch.randn(2, 4, 4, 4))
    sd = step.state_dict()
    assert sd["actnorm.initialized"].item() == 1 and sd["actnorm.initialized"].dtype == torch.uint8
    fresh = layers.FlowStep(4, hidden=8)
    fresh.load_state_dict(sd)
    assert fresh.actnorm.initialized.item() == 1 and fresh.actnorm.is_initialized()
    for name in ("w_p", "u_mask", "l_mask", "s_sign", "l_eye"):
        assert torch.equal(getattr(fresh.invconv, name), getattr(step.invconv, name))
    moved = fresh.to(torch.float64)
    assert moved.actnorm.initialized.dtype == torch.uint8 and moved.actnorm.initialized.item() == 1
    assert moved.invconv.w_p.dtype == torch.float64
    x = torch.randn(2, 4, 4, 4)
    assert torch.allclose(moved(x.double())[0].float(), step(x)[0], atol=1e-5)


def test_loading_an_uninitialised_state_resets_the_cached_flag():
    a, b = layers.ActNorm(3), layers.ActNorm(3)
    a(torch.randn(2, 3, 4, 4))
    a.load_state_dict(b.state_dict())
    assert not a.is_initialized()


def test_lu_weight_is_plu_and_logdet_is_hw_slogdet():
    conv = perturb(layers.InvConv2dLU(6)).double()
    lower = torch.tril(conv.w_l, -1) + torch.eye(6, dtype=torch.float64)
    upper = torch.triu(conv.w_u, 1) + torch.diag(conv.s_sign * torch.exp(conv.w_s))
    w = conv.compute_weight()
    assert torch.allclose(w, conv.w_p @ lower @ upper, atol=1e-12)
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    _, logdet = conv(x)
    assert torch.allclose(logdet, torch.full((2,), 15 * torch.linalg.slogdet(w)[1].item(), dtype=torch.float64))
    assert torch.allclose(conv.w_p @ conv.w_p.T, torch.eye(6, dtype=torch.float64))


def test_lu_weight_cache_follows_parameter_updates_in_eval_mode():
    conv = layers.InvConv2dLU(4).eval()
    x = torch.randn(1, 4, 2, 2)
    with torch.no_grad():
        y1 = conv(x)[0]
        conv.w_s.add_(0.3)
        y2 = conv(x)[0]
        ref = torch.nn.functional.conv2d(x, conv.compute_weight().view(4, 4, 1, 1))
    assert not torch.allclose(y1, y2)
    assert torch.allclose(y2, ref, atol=1e-6)


def test_coupling_starts_near_identity_scale():
    cp = layers.AffineCoupling(4, hidden=8)
    x = torch.randn(2, 4, 3, 3)
    y, logdet = cp(x)
    s = torch.sigmoid(torch.tensor(layers.COUPLING_SCALE_SHIFT))
    assert torch.allclose(y[:, 2:], x[:, 2:] * s, atol=1e-6)  # zero-initialised net: t = 0, log_s = 0
    assert torch.allclose(logdet, torch.full((2,), 18 * torch.log(s).item()), atol=1e-4)


def test_squeeze_channel_order_is_c4_dy2_dx():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    y = layers.squeeze(x)
    for c in range(2):
        for dy in range(2):
            for dx in range(2):
                assert torch.equal(y[0, c * 4 + dy * 2 + dx], x[0, c, dy::2, dx::2])
    assert torch.equal(layers.unsqueeze(y), x)


def test_zeroconv_pads_with_ones():
    zc = layers.ZeroConv2d(1, 1)
    with torch.no_grad():
        zc.conv.weight.fill_(1.0)
    out = zc(torch.zeros(1, 1, 3, 3))
    assert out[0, 0, 1, 1].item() == 0.0 and out[0, 0, 0, 0].item() == 5.0  # corner sees 5 padded ones


@pytest.mark.parametrize("name", ["actnorm", "invconv_lu", "coupling_affine", "flowstep"])
def test_wrong_rank_or_channels_raise_clear_error(name):
    layer = FACTORIES[name]()
    with pytest.raises(ValueError, match="4-d tensor"):
        layer(torch.randn(C, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        layer(torch.randn(1, C + 2, 4, 4))


@pytest.mark.parametrize("name", ["actnorm", "invconv_lu", "coupling_affine", "flowstep"])
def test_nan_input_raises_clear_error(name):
    layer = FACTORIES[name]()
    x = torch.randn(1, C, 4, 4)
    x[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        layer(x)
    if name == "actnorm":
        assert layer.initialized.item() == 0  # bad input changes nothing


def test_trusted_block_skips_only_the_finiteness_check():
    layer = layers.ActNorm(C)
    x = torch.randn(1, C, 2, 2)
    x[0, 0, 0, 0] = float("inf")
    with trusted():
        layer(x)
        with pytest.raises(ValueError, match="channels"):
            layer(torch.randn(1, C + 1, 2, 2))


def test_squeeze_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even height and width"):
        layers.squeeze(torch.randn(1, 3, 5, 4))
    with pytest.raises(ValueError, match="divisible by 4"):
        layers.unsqueeze(torch.randn(1, 6, 2, 2))
