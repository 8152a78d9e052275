/* Graves' backward pass for diagonal Gaussian mixtures in plain C (CPU), and the forward draw.
 *
 * The same algorithm and numerics as graves_transform.py (read its module docstring first): per sample, the
 * coefficients r, chat, s, x over [K, D], then one backward sweep over d carrying C_k, then the parameter
 * gradients. A sample's work stays in a scratch block that fits in cache (rows padded to a multiple of 8); every
 * loop over (k, d) runs with d innermost over contiguous memory so that the compiler vectorises it without
 * reassociating anything (the reductions over k accumulate into per-d arrays). Only the sweep is sequential in d,
 * O(K) per step; the sweeps of a group of samples are interleaved so that their dependency chains overlap.
 *
 * Loaded by mixvae/distributions/native.py, which compiles this file with the system C compiler on first use and
 * calls it through ctypes. The kernel is written once for a floating type `real` (this file includes itself) and
 * instantiated for float (*_f32: own vectorisable exp and log, Numerical Recipes' erfc fit for the Mills ratio,
 * as the float32 PyTorch path) and double (*_f64: libm, an exact Mills ratio).
 */
#ifndef GRAVES_BODY
#include <math.h>
#include <stdint.h>
#include <string.h>

#define HALF_LOG_2PI 0.91893853320467274178
#define SQRT_HALF_PI 1.25331413731550025121
#define INV_SQRT2 0.70710678118654752440

/* ---- float helpers: branch-free so that loops calling them vectorise ---------------------------------------- */

static inline float bits_to_float(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static inline uint32_t float_to_bits(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }

/* exp(r) for |r| <= ln2 / 2 by its Taylor series to r^7 / 7! (truncation < 6e-9 relative, below float's half
 * ulp). */
static inline float exp_taylor_f32(float r) {
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    return p * r + 1.0f;
}

/* exp(x) = 2^n exp(r), n = round(x / ln 2), |r| <= ln2 / 2. Exact 0 below -87.3, inf above 88.7, NaN kept. */
static inline float exp_f32(float x) {
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    float xc = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    float n = rintf(xc * 1.44269504088896341f);
    float r = (xc - n * ln2_hi) - n * ln2_lo;
    float p = exp_taylor_f32(r);
    int big = n > 127.0f; /* 2^128 overflows: use 2 * 2^127 */
    p = big ? 2.0f * p : p;
    n = big ? 127.0f : n;
    float y = p * bits_to_float((uint32_t)((int32_t)n + 127) << 23);
    y = x < -87.3f ? 0.0f : y;
    y = x > 88.7f ? INFINITY : y;
    return x != x ? x : y;
}

/* exp(x) for x in [-20, 1] only (the Mills ratio's polynomial argument): no range checks. */
static inline float exp_small_f32(float x) {
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    float n = rintf(x * 1.44269504088896341f);
    float r = (x - n * ln2_hi) - n * ln2_lo;
    float p = exp_taylor_f32(r);
    return p * bits_to_float((uint32_t)((int32_t)n + 127) << 23);
}

/* log(x) for x > 0: x = 2^e m with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1),
 * |s| <= 0.172, by its series to s^9 (truncation < 1e-9). Subnormal x are rescaled first. */
static inline float log_f32(float x) {
    int sub = x < 1.17549435e-38f;
    float xs = sub ? x * 8388608.0f : x; /* 2^23 */
    uint32_t b = float_to_bits(xs);
    int32_t e = (int32_t)((b >> 23) & 0xff) - 127 - (sub ? 23 : 0);
    float m = bits_to_float((b & 0x7fffff) | 0x3f800000); /* [1, 2) */
    int big = m > 1.41421356f;
    m = big ? 0.5f * m : m;
    e += big;
    float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float p = 2.0f / 9;
    p = p * s2 + 2.0f / 7;
    p = p * s2 + 2.0f / 5;
    p = p * s2 + 2.0f / 3;
    p = p * s2 + 2.0f;
    float y = (float)e * 0.693147180559945309f + s * p;
    y = x == INFINITY ? x : y;
    y = x == 0.0f ? -INFINITY : y;
    return (x != x || x < 0.0f) ? NAN : y;
}

/* Mills ratio R(t) = (1 - Phi(t)) / phi(t), t >= 0. float: erfc(y) = u exp(-y^2 + P(u)), u = 1 / (1 + y / 2),
 * relative error < 1.2e-7 (Press et al., Numerical Recipes, 2nd ed., sec. 6.2), so R = sqrt(pi/2) u exp(P(u)). */
static inline float mills_f32(float t) {
    float u = 1.0f / (1.0f + 0.5f * (float)INV_SQRT2 * t);
    float p = 0.17087277f;
    p = p * u - 0.82215223f;
    p = p * u + 1.48851587f;
    p = p * u - 1.13520398f;
    p = p * u + 0.27886807f;
    p = p * u - 0.18628806f;
    p = p * u + 0.09678418f;
    p = p * u + 0.37409196f;
    p = p * u + 1.00002368f;
    p = p * u - 1.26551223f;
    return (float)SQRT_HALF_PI * u * exp_small_f32(p); /* p in [-1.27, 0.01] for u in (0, 1] */
}

/* double: R(t) = sqrt(2 pi) exp(t^2 / 2) erfc(t / sqrt 2) / 2 while erfc does not underflow (relative error
 * ~ t^2 eps from the exponent), Laplace's continued fraction 1 / (t + 1 / (t + 2 / (t + ...))) beyond. */
static inline double mills_f64(double t) {
    if (t < 26.0) return 2.0 * SQRT_HALF_PI * exp(0.5 * t * t) * 0.5 * erfc(t * INV_SQRT2);
    double f = t;
    for (int j = 24; j >= 1; --j) f = t + j / f;
    return 1.0 / f;
}

static inline double exp_f64(double x) { return exp(x); }
static inline double log_f64(double x) { return log(x); }

/* ---- the kernel, once per type (this file includes itself with `real` defined) ---------------------------- */

#define GRAVES_BODY
#define real float
#define EXP exp_f32
#define LOG log_f32
#define MILLS mills_f32
#define FN(name) graves_##name##_f32
#include __FILE__
#undef real
#undef EXP
#undef LOG
#undef MILLS
#undef FN
#define real double
#define EXP exp_f64
#define LOG log_f64
#define MILLS mills_f64
#define FN(name) graves_##name##_f64
#include __FILE__

#else /* GRAVES_BODY: the kernel for one type */

/* Per-sample scratch: eight [K, Dp] arrays (rows padded to a multiple of 8 so that inner loops run whole
 * vectors), seven [Dp] arrays and C [K]. Samples are processed in groups of G (as many as fit in ~256 KiB) so that
 * the sequential sweeps of the G samples interleave: each alone is one long dependency chain. */
static int64_t FN(padded)(int64_t D) { return (D + 7) / 8 * 8; }
static int64_t FN(sample_size)(int64_t K, int64_t D) { int64_t Dp = FN(padded)(D); return 8 * K * Dp + 7 * Dp + K; }
int64_t FN(group)(int64_t K, int64_t D) {
    int64_t g = (int64_t)(262144 / sizeof(real)) / FN(sample_size)(K, D);
    return g < 1 ? 1 : (g > 8 ? 8 : g);
}
int64_t FN(scratch)(int64_t K, int64_t D) { return FN(group)(K, D) * FN(sample_size)(K, D); }

typedef struct {
    real *X, *INV, *SIG, *S, *A, *W, *R, *WF, *CH, *v, *C;
} FN(work);

static FN(work) FN(layout)(real *scratch, int64_t K, int64_t Dp) {
    const int64_t KDp = K * Dp;
    FN(work) w;
    w.X = scratch; w.INV = w.X + KDp; w.SIG = w.INV + KDp; w.S = w.SIG + KDp; w.A = w.S + KDp;
    w.W = w.A + KDp; w.CH = w.W + KDp; w.WF = w.CH + KDp;
    w.v = w.WF + KDp + 6 * Dp; /* after the six per-d arrays of FN(coefficients) */
    w.C = w.v + Dp;
    w.R = w.A; /* r reuses a's storage once a is consumed (chat's slot holds exp(b - max b) until then) */
    return w;
}

/* r, chat, s = -x / sigma, x, sigma and 1 / sigma of one sample, into its scratch (rows of length Dp).
 * Two identities save work: r_kd = w_k,d+1 (the weights given z_<=d), so w is r shifted by one dimension, and
 * logsumexp_k a_k,d+1 = logsumexp_k (a_kd + log phi_kd) = log f_d + logsumexp_k a_kd, so 1 / f_d needs one exp per
 * d. Per (k, d) that leaves one log (sigma), one exp (r) and the Mills ratio's exp. */
static void FN(coefficients)(int64_t K, int64_t D, const real *zn, const real *ln, const real *mu, const real *sg,
                             real *scratch) {
    const int64_t Dp = FN(padded)(D), KDp = K * Dp;
    FN(work) w = FN(layout)(scratch, K, Dp);
    real *restrict X = w.X, *restrict INV = w.INV, *restrict SIG = w.SIG, *restrict W = w.W, *restrict WF = w.WF;
    real *LP = w.S, *A = w.A, *R = w.R; /* R and A share storage, as LP and S: no restrict on these */
    real *restrict m2 = WF + KDp, *restrict s2 = m2 + Dp, *restrict lse = s2 + Dp, *restrict inv_f = lse + Dp;
    real *restrict lsum = inv_f + Dp, *restrict tsum = lsum + Dp;
    /* x = (z - mu) / sigma and log phi (up to the constant -log sqrt(2 pi), which cancels in every ratio); the
     * padding (d >= D) gets x = 0, sigma = 1, so every padded quantity stays finite and is never read back */
    for (int64_t k = 0; k < K; ++k) {
        real *restrict x = X + k * Dp, *restrict inv = INV + k * Dp, *restrict sig = SIG + k * Dp;
        real *restrict lp = LP + k * Dp;
        const real *mk = mu + k * D, *sk = sg + k * D;
        #pragma GCC ivdep
        for (int64_t d = 0; d < D; ++d) {
            real i = (real)1 / sk[d], xd = (zn[d] - mk[d]) * i;
            x[d] = xd;
            inv[d] = i;
            sig[d] = sk[d];
            lp[d] = (real)-0.5 * xd * xd - LOG(sk[d]);
        }
        for (int64_t d = D; d < Dp; ++d) { x[d] = 0; inv[d] = 1; sig[d] = 1; lp[d] = 0; }
    }
    /* b_kd = log pi_k + sum_{j<=d} log phi_kj (unnormalised log r): K running sums side by side, and their
     * maximum over k per d (a blocked vectorised scan measured no faster) */
    real *restrict C = w.C;
    for (int64_t k = 0; k < K; ++k) C[k] = ln[k];
    for (int64_t d = 0; d < Dp; ++d) {
        real m = -INFINITY;
        for (int64_t k = 0; k < K; ++k) {
            C[k] += LP[k * Dp + d];
            A[k * Dp + d] = C[k];
            m = C[k] > m ? C[k] : m;
        }
        m2[d] = m;
        s2[d] = 0;
        lsum[d] = 0;
        tsum[d] = 0;
    }
    /* unnormalised r: exp(b - max_k b), into the storage chat takes later, and its sum over k */
    real *E = w.CH;
    for (int64_t k = 0; k < K; ++k)
        #pragma GCC ivdep
        for (int64_t d = 0; d < Dp; ++d) {
            const int64_t i = k * Dp + d;
            real e = EXP(A[i] - m2[d]);
            E[i] = e;
            s2[d] += e;
        }
    real m0 = -INFINITY, s0 = 0;
    for (int64_t k = 0; k < K; ++k) m0 = ln[k] > m0 ? ln[k] : m0;
    for (int64_t k = 0; k < K; ++k) s0 += EXP(ln[k] - m0);
    real lse_prev = m0 + LOG(s0); /* logsumexp_k a_k0 */
    for (int64_t d = 0; d < Dp; ++d) {
        lse[d] = m2[d] + LOG(s2[d]); /* logsumexp_k b_kd = logsumexp_k a_k,d+1 */
        s2[d] = (real)1 / s2[d];
    }
    for (int64_t d = 0; d < Dp; ++d) {
        inv_f[d] = EXP(lse_prev - lse[d] + (real)HALF_LOG_2PI);
        lse_prev = lse[d];
    }
    /* r = E / sum (into a's storage: a is consumed), w_kd = r_k,d-1 (w_k0 = softmax(logits)), w / f and the
     * side test, in one pass */
    for (int64_t k = 0; k < K; ++k) {
        const real w0 = EXP(ln[k] - m0) / s0;
        const real *restrict e = E + k * Dp, *restrict x = X + k * Dp;
        real *restrict r = R + k * Dp, *restrict wk = W + k * Dp, *restrict wf = WF + k * Dp;
        #pragma GCC ivdep
        for (int64_t d = 0; d < Dp; ++d) {
            const real wn = d > 0 ? e[d - (d > 0)] * s2[d - (d > 0)] : w0;
            r[d] = e[d] * s2[d];
            wk[d] = wn;
            wf[d] = wn > 0 ? wn * inv_f[d] : 0; /* 0 * inf (f underflowed, w negligible) is 0 */
            lsum[d] += wn * (x[d] / (1 + (x[d] < 0 ? -x[d] : x[d]))); /* crude side test: u_d < 1/2 roughly */
        }
    }
    /* the tail form whose terms are small (see _tail_coefficients): w T / f = r sigma R(|x|) */
    real *S = w.S, *CH = w.CH;
    for (int64_t k = 0; k < K; ++k)
        #pragma GCC ivdep
        for (int64_t d = 0; d < Dp; ++d) {
            const int64_t i = k * Dp + d;
            real x = X[i], t = x < 0 ? -x : x;
            real small = R[i] * SIG[i] * MILLS(t);
            real tail = ((lsum[d] < 0) == (x < 0)) ? small : WF[i] - small;
            CH[i] = tail;
            tsum[d] += tail;
            S[i] = -x * INV[i];
        }
    for (int64_t k = 0; k < K; ++k)
        #pragma GCC ivdep
        for (int64_t d = 0; d < Dp; ++d) {
            const int64_t i = k * Dp + d;
            real wt = W[i] * tsum[d];
            CH[i] = lsum[d] < 0 ? CH[i] - wt : wt - CH[i];
        }
}

/* dL/dtheta of one sample from its scratch, v' and C_kd (parked in W, no longer needed). */
static void FN(parameter_grads)(int64_t K, int64_t D, real *scratch, real *gl, real *gmu, real *gsg) {
    const int64_t Dp = FN(padded)(D);
    FN(work) w = FN(layout)(scratch, K, Dp);
    const real *restrict X = w.X, *restrict INV = w.INV, *restrict S = w.S, *restrict R = w.R;
    const real *restrict BC = w.W, *restrict v = w.v;
    for (int64_t k = 0; k < K; ++k) {
        gl[k] = -w.C[k]; /* -sum_d v'_d chat_kd */
        real *restrict gm = gmu + k * D, *restrict gs = gsg + k * D;
        #pragma GCC ivdep
        for (int64_t d = 0; d < D; ++d) {
            const int64_t i = k * Dp + d;
            real c = BC[i], vr = v[d] * R[i], x = X[i];
            gm[d] = vr + c * S[i];
            gs[d] = vr * x - c * (x * x - 1) * INV[i];
        }
    }
}

/* The forward draw, in two steps. The index: k = #{j < K-1 : F_j <= u S}, the inverse CDF of softmax(logits) at
 * u ~ U[0, 1) (F the running sum of exp(logit - max), S its total), as DiagGaussianMixture.index_from_uniform. */
void FN(sample_index)(int64_t N, int64_t K, const real *logits, const real *u, int64_t *index) {
    for (int64_t n = 0; n < N; ++n) {
        const real *ln = logits + n * K;
        real m = -INFINITY, total = 0, acc = 0;
        for (int64_t k = 0; k < K; ++k) m = ln[k] > m ? ln[k] : m;
        for (int64_t k = 0; k < K; ++k) total += EXP(ln[k] - m);
        const real threshold = u[n] * total;
        int64_t pick = 0;
        for (int64_t k = 0; k < K - 1; ++k) {
            acc += EXP(ln[k] - m);
            pick += acc <= threshold;
        }
        index[n] = pick;
    }
}

/* Then z = loc_k + scale_k eps for the drawn k. */
void FN(compose)(int64_t N, int64_t K, int64_t D, const real *loc, const real *scale, const int64_t *index,
                 const real *eps, real *z) {
    for (int64_t n = 0; n < N; ++n) {
        const real *mu = loc + (n * K + index[n]) * D, *sg = scale + (n * K + index[n]) * D, *e = eps + n * D;
        real *zn = z + n * D;
        for (int64_t d = 0; d < D; ++d) zn[d] = mu[d] + sg[d] * e[d];
    }
}

void FN(vjp)(int64_t n0, int64_t n1, int64_t K, int64_t D, const real *grad_z, const real *z, const real *logits,
             const real *loc, const real *scale, real *grad_logits, real *grad_loc, real *grad_scale,
             real *scratch) {
    const int64_t KD = K * D, Dp = FN(padded)(D), G = FN(group)(K, D), size = FN(sample_size)(K, D);
    for (int64_t n = n0; n < n1; n += G) {
        const int64_t g_end = n + G < n1 ? G : n1 - n;
        FN(work) w[8];
        for (int64_t g = 0; g < g_end; ++g) {
            const int64_t m = n + g;
            FN(coefficients)(K, D, z + m * D, logits + m * K, loc + m * KD, scale + m * KD, scratch + g * size);
            w[g] = FN(layout)(scratch + g * size, K, Dp);
            for (int64_t k = 0; k < K; ++k) w[g].C[k] = 0;
        }
        /* the sweeps, interleaved over the group: v'_d = g_d - sum_k s_kd C_k; C_kd = C_k; C_k += v'_d chat_kd */
        for (int64_t d = D - 1; d >= 0; --d)
            for (int64_t g = 0; g < g_end; ++g) {
                const real *S = w[g].S, *CH = w[g].CH;
                real *C = w[g].C, *BC = w[g].W;
                real acc = grad_z[(n + g) * D + d];
                for (int64_t k = 0; k < K; ++k) acc -= S[k * Dp + d] * C[k];
                w[g].v[d] = acc;
                for (int64_t k = 0; k < K; ++k) {
                    BC[k * Dp + d] = C[k];
                    C[k] += acc * CH[k * Dp + d];
                }
            }
        for (int64_t g = 0; g < g_end; ++g) {
            const int64_t m = n + g;
            FN(parameter_grads)(K, D, scratch + g * size, grad_logits + m * K, grad_loc + m * KD,
                                grad_scale + m * KD);
        }
    }
}
#endif
