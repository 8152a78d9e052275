"""A mixture of diagonal Gaussians with exact, reparameterized samples (Graves 2016)."""

from __future__ import annotations

import math

import torch
from torch.distributions import Categorical, Distribution, Independent, Normal, constraints

from mixvae.distributions import graves_transform as gt
from mixvae.distributions import native

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _broadcast_shapes(*shapes, what: str):
    """torch.broadcast_shapes in plain Python (torch's is a slow reference implementation; this runs per step)."""
    ndim = max(len(s) for s in shapes)
    out = [1] * ndim
    for shape in shapes:
        for i, size in enumerate(shape, start=ndim - len(shape)):
            if size != 1 and size != out[i]:
                if out[i] != 1:
                    break
                out[i] = size
        else:
            continue
        raise ValueError(
            f"DiagGaussianMixture: {what} do not broadcast ({', '.join(str(tuple(s)) for s in shapes)}); "
            "expected logits [..., K] and loc, scale [..., K, D]"
        )
    return torch.Size(out)


def _lead_ones(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``t`` viewed with leading size-1 axes up to ``ndim`` dimensions (unchanged if it has as many already).

    The same broadcast as leaving them out, and the same values, but autograd then hands ``t`` its gradient
    through a view instead of a reduction over the size-1 sample axis (a whole extra pass over a [1, B, K, D]
    gradient, per operation, at S = 1)."""
    missing = ndim - t.dim()
    return t.view((1,) * missing + tuple(t.shape)) if missing > 0 else t


def _as(t: torch.Tensor, dtype: torch.dtype, shape) -> torch.Tensor:
    """``t`` in ``dtype``, expanded to ``shape`` (no op when it already is both)."""
    if t.dtype is not dtype:
        t = t.to(dtype)
    return t if t.shape == shape else t.expand(shape)


def _conditional_cdf(value, logits, loc, scale):
    """u_d = F_d(value_d | value_<d), ``[..., D]``; stable in both tails (see graves_transform)."""
    x, _, log_w = gt.log_conditional_weights(value, logits, loc, scale)  # [..., K, D]
    log_u = (log_w + torch.special.log_ndtr(x)).logsumexp(-2)
    log_sf = (log_w + torch.special.log_ndtr(-x)).logsumexp(-2)
    # 1 - exp(log(1 - u)) above the median keeps the digits of u close to 1
    return torch.where(log_u < math.log(0.5), log_u.exp(), -torch.expm1(log_sf))


class DiagGaussianMixture(Distribution):
    r"""q(z) = sum_k pi_k prod_d N(z_d; loc_kd, scale_kd),  pi = softmax(logits).

    Args:
        logits: ``[*batch, K]`` unnormalised log mixture weights.
        loc: ``[*batch, K, D]`` component means.
        scale: ``[*batch, K, D]`` component standard deviations (> 0).
        validate_args: check shapes and values, raising a one-line ``ValueError`` naming the argument
            (None: torch's global default, see ``torch.distributions.Distribution.set_default_validate_args``).
        block_size: dimensions per triangular solve in the Graves backward pass (the PyTorch backends).
        backend: how the Graves backward pass runs: "auto" (the C kernel for CPU float32/float64, the Triton
            kernel for CUDA float32 when triton is installed, torch.compile elsewhere), "native", "triton",
            "compile" or "eager"; None: the innermost ``graves_transform.backend(...)``
            block, else the process default ($MIXVAE_GRAVES_BACKEND, else "auto"). Fixed at construction.

    The three parameter tensors broadcast against each other; ``batch_shape`` is the broadcast ``[*batch]`` and
    ``event_shape`` is ``(D,)``.

    ``rsample`` draws exactly (component index, then Gaussian) and differentiates with Graves' transform:
    the gradient holds the distributional transform u = F(z) fixed (see ``graves_transform`` for the math),
    in O(K D) time and memory per sample. With K = 1 it is exactly ``Normal(loc, scale).rsample``.
    float16 and bfloat16 parameters are sampled and differentiated in float32 (see :meth:`rsample`).
    """

    arg_constraints = {
        "logits": constraints.independent(constraints.real, 1),
        "loc": constraints.independent(constraints.real, 2),
        "scale": constraints.independent(constraints.positive, 2),
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, logits, loc, scale, validate_args=None, block_size: int = gt.DEFAULT_BLOCK_SIZE,
                 backend: str | None = None):
        validate = Distribution._validate_args if validate_args is None else bool(validate_args)
        for name, value, min_dim in (("logits", logits, 1), ("loc", loc, 2), ("scale", scale, 2)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"DiagGaussianMixture: {name} must be a torch.Tensor, got {type(value).__name__}")
            if value.dim() < min_dim:
                shape = "[..., K]" if min_dim == 1 else "[..., K, D]"
                raise ValueError(
                    f"DiagGaussianMixture: {name} must have shape {shape}, got {tuple(value.shape)}"
                )
        # the backend is fixed here, so the backward pass runs where the caller chose whenever it is called
        self.backend = gt.get_backend() if backend is None else gt.check_backend(backend, "DiagGaussianMixture backend")
        ls, ms, ss = logits.shape, loc.shape, scale.shape
        if ms == ss and ls == ms[:-1]:  # the common case, without the general broadcast
            k, d, batch_shape = ms[-2], ms[-1], ls[:-1]
        else:
            kd = _broadcast_shapes(ms[-2:], ss[-2:], what="loc and scale")
            k = _broadcast_shapes(ls[-1:], kd[:1], what="the component axes (K) of logits and loc/scale")[0]
            d = kd[1]
            batch_shape = _broadcast_shapes(ls[:-1], ms[:-2], ss[:-2],
                                            what="the batch shapes of logits, loc and scale")
        dtype = logits.dtype
        if loc.dtype is not dtype or scale.dtype is not dtype:
            dtype = torch.promote_types(torch.promote_types(dtype, loc.dtype), scale.dtype)
        if not dtype.is_floating_point:
            raise ValueError(f"DiagGaussianMixture: parameters must be floating point, got {dtype}")
        if validate:
            self._check_values(logits, loc, scale)
        self.logits = _as(logits, dtype, (*batch_shape, k))
        self.loc = _as(loc, dtype, (*batch_shape, k, d))
        self.scale = _as(scale, dtype, (*batch_shape, k, d))
        self.block_size = int(block_size)
        # Distribution.__init__ without its argument checks (done above) and its per-call overhead
        self._batch_shape, self._event_shape = torch.Size(batch_shape), torch.Size((d,))
        self._validate_args = validate  # validate samples passed to log_prob as the user asked

    @staticmethod
    def _check_values(logits, loc, scale):
        """A one-line ValueError naming the first invalid argument. On CPU one vectorised C pass over each
        parameter (native.check); elsewhere a few reductions, with one host sync each."""
        if (native.supports(loc) and logits.dtype is loc.dtype is scale.dtype and logits.is_contiguous()
                and loc.is_contiguous() and scale.is_contiguous() and native.available()):
            bad = native.check(logits, loc, scale)
            if not bad:
                return
            flags = [bool(bad & bit) for bit in native.CHECK_BITS]
        else:
            flags = [bool(torch.isnan(logits).any() or (logits == math.inf).any()),
                     bool(torch.isneginf(logits).all(-1).any()),
                     not bool(torch.isfinite(loc).all()),
                     not bool(torch.isfinite(scale).all()),
                     not bool((scale > 0).all())]
        messages = (
            "logits contain NaN or +inf (use finite values; -inf masks a component)",
            "every logit of some mixture is -inf (at least one must be finite)",
            "loc contains NaN or inf",
            "scale contains NaN or inf",
            "scale must be > 0 (use softplus or exp of a network output)",
        )
        for flag, message in zip(flags, messages):
            if flag:
                raise ValueError(f"DiagGaussianMixture: {message}")

    # ---- accessors -------------------------------------------------------------------------------------------
    @property
    def num_components(self) -> int:
        return self.logits.shape[-1]

    @property
    def log_weights(self) -> torch.Tensor:
        """log pi ``[*batch, K]``."""
        return self.logits.log_softmax(-1)

    @property
    def mixture_distribution(self) -> Categorical:
        return Categorical(logits=self.logits, validate_args=False)

    @property
    def component_distribution(self) -> Independent:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        """``[*batch, D]``: sum_k pi_k mu_k."""
        return (self.log_weights.exp().unsqueeze(-1) * self.loc).sum(-2)

    @property
    def variance(self) -> torch.Tensor:
        """``[*batch, D]``: sum_k pi_k (sigma_k^2 + mu_k^2) - mean^2 (law of total variance)."""
        w = self.log_weights.exp().unsqueeze(-1)
        mean = (w * self.loc).sum(-2)
        return (w * (self.loc - mean.unsqueeze(-2)).pow(2)).sum(-2) + (w * self.scale.pow(2)).sum(-2)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(DiagGaussianMixture, _instance)
        k, d = self.num_components, self.event_shape[0]
        new.logits = self.logits.expand(*batch_shape, k)
        new.loc = self.loc.expand(*batch_shape, k, d)
        new.scale = self.scale.expand(*batch_shape, k, d)
        new.block_size, new.backend = self.block_size, self.backend
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    # ---- sampling --------------------------------------------------------------------------------------------
    def sample_index(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Component indices ``[*sample_shape, *batch]`` (int64), k ~ Cat(pi), by the inverse CDF of one uniform
        per draw (:meth:`index_from_uniform`)."""
        shape = torch.Size(sample_shape) + self.batch_shape
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
        return self.index_from_uniform(u)

    def index_from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        """k = #{j < K-1 : F_j <= u}, F the running sum of the weights: the inverse CDF of Cat(pi) at u in [0, 1)
        (``[*S, *batch]`` -> int64 of the same shape). A zero-weight component is never drawn."""
        k = self.num_components
        lead = u.shape
        logits = self.logits.detach().expand(*lead, k).reshape(-1, k)
        flat_u = u.detach().reshape(-1)
        if gt.use_native(logits, self.backend):
            return native.sample_index(logits, flat_u).reshape(lead)
        with torch.no_grad():
            weights = (logits - logits.amax(-1, keepdim=True)).exp()
            running = weights[:, :-1].cumsum(-1)
            threshold = flat_u.to(weights.dtype).unsqueeze(-1) * weights.sum(-1, keepdim=True)
            return (running <= threshold).sum(-1).reshape(lead)

    def rsample_component(self, index: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """z = loc[k] + scale[k] * eps for given indices ``[*S, *batch]``: pathwise in loc and scale only
        (no gradient to the logits; the score-function estimators supply that). Returns ``[*S, *batch, D]``."""
        d = self.event_shape[0]
        lead = index.shape
        if eps is None:
            eps = torch.randn(*lead, d, dtype=self.loc.dtype, device=self.loc.device)
        if self.num_components == 1:  # the only index is 0: broadcast, no gather over the sample axes
            return self.loc[..., 0, :] + self.scale[..., 0, :] * eps
        loc = self.loc.expand(*lead, self.num_components, d)
        scale = self.scale.expand(*lead, self.num_components, d)
        gather = index.unsqueeze(-1).unsqueeze(-1).expand(*lead, 1, d)
        return torch.gather(loc, -2, gather).squeeze(-2) + torch.gather(scale, -2, gather).squeeze(-2) * eps

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Exact sample ``[*sample_shape, *batch, D]`` with Graves' pathwise gradient to logits, loc and scale.

        float16 / bfloat16 parameters are sampled and differentiated in float32 (the backward pass needs the
        range and digits); the sample and the gradients come back in the parameters' dtype."""
        if self.loc.dtype in _LOW_PRECISION:
            return self._in_float32().rsample(sample_shape).to(self.loc.dtype)
        shape = self._extended_shape(sample_shape)  # [*S, *batch, D]
        loc, scale, logits = self.loc, self.scale, self.logits
        k, d = loc.shape[-2], shape[-1]
        eps = torch.randn(shape, dtype=loc.dtype, device=loc.device)
        if k == 1:  # the Gaussian reparameterization, bit for bit
            return _lead_ones(loc[..., 0, :], len(shape)) + _lead_ones(scale[..., 0, :], len(shape)) * eps
        lead = shape[:-1]
        u = torch.rand(lead, dtype=logits.dtype, device=logits.device)  # one uniform per draw, after the noise
        if len(lead) == 1 and lead == logits.shape[:-1] and gt.use_native(logits, self.backend):  # no broadcast
            index = native.sample_index(logits, u)
        else:
            index = self.index_from_uniform(u)
        if not (torch.is_grad_enabled() and (logits.requires_grad or loc.requires_grad or scale.requires_grad)):
            return self.rsample_component(index, eps).detach()
        n = lead.numel()
        if lead != logits.shape[:-1] and n != logits.shape[:-1].numel():  # sample axes: the parameters broadcast
            logits, loc, scale = logits.expand(*lead, k), loc.expand(*lead, k, d), scale.expand(*lead, k, d)
        # flat [N, ...] for the Function (a reshape to the same shape would still add a node)
        if logits.dim() != 2 or loc.dim() != 3:  # [K] and [K, D] too: a distribution with no batch axes
            logits, loc, scale = logits.reshape(n, k), loc.reshape(n, k, d), scale.reshape(n, k, d)
        if len(lead) != 1:
            index, eps = index.reshape(n), eps.reshape(n, d)
        z = gt.GravesSample.apply(logits, loc, scale, index, eps, self.block_size, self.backend)
        return z if len(lead) == 1 else z.reshape(shape)

    def _in_float32(self) -> DiagGaussianMixture:
        """The same distribution with float32 parameters (differentiable casts), already validated."""
        return DiagGaussianMixture(self.logits.float(), self.loc.float(), self.scale.float(), validate_args=False,
                                   block_size=self.block_size, backend=self.backend)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            index = self.sample_index(sample_shape)
            return self.rsample_component(index)

    # ---- densities -------------------------------------------------------------------------------------------
    def component_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log N(value; loc_k, diag scale_k^2) for every k: ``[..., D] -> [..., K]`` (broadcast with batch)."""
        loc, scale = _lead_ones(self.loc, value.dim() + 1), _lead_ones(self.scale, value.dim() + 1)
        x = (value.unsqueeze(-2) - loc) / scale  # [..., K, D]
        return (-0.5 * x * x - scale.log()).sum(-1) - self.event_shape[0] * _HALF_LOG_2PI

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Marginal log density ``[*sample, *batch]`` (logsumexp over components)."""
        if self._validate_args:
            self._validate_sample(value)
        return (self.component_log_prob(value) + _lead_ones(self.log_weights, value.dim())).logsumexp(-1)

    def cdf_conditional(self, value: torch.Tensor) -> torch.Tensor:
        """The distributional transform u_d = F_d(z_d | z_<d): ``[..., D]`` -> ``[..., D]`` in (0, 1).

        For z ~ q the coordinates of u are independent Uniform(0, 1) (Graves 2016, eq. 2)."""
        return _conditional_cdf(value, self.logits, self.loc, self.scale)

    def inverse_cdf_conditional(self, u: torch.Tensor, iterations: int = 100) -> torch.Tensor:
        """Invert :meth:`cdf_conditional` coordinate by coordinate by bisection: ``[..., D] -> [..., D]``.

        Slow (D sequential bisections of ``iterations`` steps) but exact to the working precision: the reference
        map z(u; theta) whose derivative Graves' transform computes. Runs without gradient."""
        with torch.no_grad():
            d = self.event_shape[0]
            shape = torch.broadcast_shapes(u.shape, self._extended_shape())
            z = torch.zeros(shape, dtype=self.loc.dtype, device=self.loc.device)
            u = u.expand(shape)
            span = (self.loc.abs() + 40 * self.scale).amax(dim=(-2, -1))  # bracket per mixture, [*batch]
            for j in range(d):
                lo = -span.expand(shape[:-1]).clone()
                hi = span.expand(shape[:-1]).clone()
                for _ in range(iterations):
                    mid = 0.5 * (lo + hi)
                    z[..., j] = mid
                    cdf = _conditional_cdf(z[..., : j + 1], self.logits, self.loc[..., : j + 1], self.scale[..., : j + 1])
                    below = cdf[..., j] < u[..., j]
                    lo = torch.where(below, mid, lo)
                    hi = torch.where(below, hi, mid)
                z[..., j] = 0.5 * (lo + hi)
            return z

    def __repr__(self):
        return (f"DiagGaussianMixture(batch_shape={tuple(self.batch_shape)}, K={self.num_components}, "
                f"D={self.event_shape[0]})")
