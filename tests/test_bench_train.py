"""scripts/bench_train.py end to end on tiny generated data, and the two model functions it made faster."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mixvae.data.fixtures import write_fixture_root
from mixvae.models.ops import bernoulli_log_prob, softplus

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import bench_train  # noqa: E402


def test_bench_train_quick_writes_the_table(tmp_path):
    root = write_fixture_root(tmp_path / "data", n_train=300, n_test=100)
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(REPO / "scripts" / "bench_train.py"), "--quick", "--device", "cpu",
                    "--data-root", str(root), "--out", str(out)], check=True, capture_output=True, text=True,
                   cwd=REPO, timeout=300)
    text = (out / "train_throughput.md").read_text()
    for name in ("gaussian", "graves", "enumerate", "score_function"):
        assert f"| {name} |" in text
    assert "within 1.15x of the Gaussian VAE step" in text and "IWAE-50 evaluation" in text
    assert "matrix products alone (the floor" in text and "C kernel path" in text
    floor = re.search(r"the graves step would be (\d+\.\d+)x \(the floor its layer sizes set\)", text)
    assert floor and float(floor.group(1)) > 0, text  # a number (its size depends on the load: not a timed test)
    assert re.search(r"adding the Graves backward .* the graves step would be \d+\.\d+x; the 1\.15x target then "
                     r"leaves -?\d+\.\d+ ms .* which costs -?\d+\.\d+ ms here", text), text
    assert "git revision" in text and "load average" in text


def test_unavoidable_line_adds_the_kernel_and_optimizer_to_the_matmul_floor():
    parts = {"gaussian": {"of which graves backward": 0.0, "optimizer": 0.61},
             "graves": {"of which graves backward": 0.23, "optimizer": 0.67}}
    line = bench_train.unavoidable_line(6.92e-3, 8.28e-3, {"gaussian": 4.15e-3, "graves": 4.82e-3}, parts)
    # 0.67 + 0.23 + 0.06 = 0.96 ms on a 6.92 ms step: 1.14x; 15% of 6.92 is 1.04 ms, so 0.08 ms is left, and the
    # step's 1.36 ms of extra time less those 0.96 ms is 0.40 ms
    assert "(+0.23 ms)" in line and "(+0.06 ms" in line and "(+0.67 ms)" in line, line
    assert "the graves step would be 1.14x; the 1.15x target then leaves 0.08 ms" in line, line
    assert line.endswith("which costs 0.40 ms here"), line


@pytest.mark.parametrize("scale", [1.0, 8.0, 40.0])
def test_fast_softplus_and_bernoulli_log_prob_match_float64(scale):
    """Values and gradients against float64 F.softplus, to float32 working precision (they replace it)."""
    gen = torch.Generator().manual_seed(0)
    a = (scale * torch.randn(3, 4, 784, generator=gen)).requires_grad_()
    x = torch.bernoulli(torch.full((4, 784), 0.3), generator=gen)
    a64 = a.detach().double().requires_grad_()

    ll = bernoulli_log_prob(a, x)  # [3, 4]
    ref = (x.double() * a64 - F.softplus(a64)).sum(-1)
    (ll * torch.arange(12.0).view(3, 4)).sum().backward()
    (ref * torch.arange(12.0, dtype=torch.float64).view(3, 4)).sum().backward()
    # a float32 sum of 784 terms of size up to |a| carries about 784 * |a| * 2^-24 of rounding
    torch.testing.assert_close(ll.double(), ref, rtol=0, atol=784 * scale * 6e-8 * 4)
    torch.testing.assert_close(a.grad.double(), a64.grad, rtol=1e-6, atol=1e-6)

    b = a.detach()[0].clone().requires_grad_()
    b64 = b.detach().double().requires_grad_()
    softplus(b).sum().backward()
    F.softplus(b64).sum().backward()
    torch.testing.assert_close(softplus(b).double(), F.softplus(b64), rtol=2e-7, atol=1.2e-7)
    torch.testing.assert_close(b.grad.double(), b64.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(3, 4, 784), (4, 784), (2, 3, 4, 50)])
def test_bernoulli_log_prob_without_gradient_takes_the_c_pass(shape, monkeypatch):
    """Evaluation (no gradient) goes through the C kernel when it is available, with the values of the autograd
    path to float32 working precision; with a gradient to take, the autograd path runs (training unchanged)."""
    from mixvae.distributions import native
    from mixvae.models import ops

    if not native.available():
        pytest.skip(f"C kernel unavailable: {native.unavailable_reason()}")
    gen = torch.Generator().manual_seed(1)
    a = 6 * torch.randn(*shape, generator=gen)
    x = torch.bernoulli(torch.full(shape[-2:], 0.3), generator=gen)
    calls, kernel = [], native.bernoulli_log_prob
    monkeypatch.setattr(native, "bernoulli_log_prob", lambda *args: calls.append(1) or kernel(*args))
    with torch.no_grad():
        got = ops.bernoulli_log_prob(a, x)
    assert calls and got.shape == shape[:-1]
    ref = (x.double() * a.double() - F.softplus(a.double())).sum(-1)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=shape[-1] * 6 * 6e-8 * 4)
    calls.clear()
    with_grad = ops.bernoulli_log_prob(a.clone().requires_grad_(), x)
    assert not calls and with_grad.requires_grad
    x_row = x[:1]  # x broadcast over the batch too: not the trailing axes of the logits, so the autograd path
    with torch.no_grad():
        torch.testing.assert_close(ops.bernoulli_log_prob(a, x_row).double(),
                                   (x_row.double() * a.double() - F.softplus(a.double())).sum(-1),
                                   rtol=0, atol=shape[-1] * 6 * 6e-8 * 4)
    assert not calls


def test_bernoulli_log_prob_gradient_to_the_data():
    a = torch.randn(2, 3, 5)
    x = torch.rand(3, 5, requires_grad=True)
    bernoulli_log_prob(a, x).sum().backward()
    torch.testing.assert_close(x.grad, a.sum(0))
