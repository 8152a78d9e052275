/* Graves' backward pass for diagonal Gaussian mixtures in plain C (CPU), and the forward draw.
 *
 * The same algorithm and numerics as graves_transform.py (read its module docstring first): per sample, the
 * coefficients r, chat, s, x over [K, D], then one backward sweep over d carrying C_k, which also gives the
 * parameter gradients. The lanes of the vectors are samples: V samples (one vector register of `real`) are worked
 * on together, their inputs transposed into a lane layout [K, D, V] a V x V tile at a time, so that every loop over
 * (k, d) is whole-vector arithmetic: the reductions over k and the running sums over d are element-wise, no scalar
 * remainders whatever K and D are, and the sequential sweep runs V samples per instruction.
 *
 * The vector width is chosen when the file is compiled, from what the compiler targets (native.py passes the flags
 * of the ISA it detected; graves_isa() names the path that was built):
 *   avx512  __AVX512F__: 64-byte vectors (16 floats), the tiles transposed by AVX-512 shuffles;
 *   avx2    __AVX2__:    32-byte vectors (8 floats), AVX2 shuffles;
 *   plain   otherwise:   16-byte "vectors" (4 floats) in portable C, plain-loop transposes. Any C99 compiler builds
 *                        it (aarch64 and others: the compiler maps the lane loops to NEON/SSE2 where it can).
 *
 * Loaded by mixvae/distributions/native.py, which compiles this file with the system C compiler on first use and
 * calls it through ctypes. The kernel is written once for a floating type `real` (this file includes itself) and
 * instantiated for float (*_f32: own vectorisable exp and log, and the Mills ratio as a polynomial, the same fit
 * as the float32 PyTorch path) and double (*_f64: libm, an exact Mills ratio).
 */
#ifndef GRAVES_BODY
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#if defined(__AVX512F__)
#define GRAVES_ISA "avx512"
#define VECTOR_BYTES 64
#elif defined(__AVX2__)
#define GRAVES_ISA "avx2"
#define VECTOR_BYTES 32
#else
#define GRAVES_ISA "plain"
#define VECTOR_BYTES 16
#endif

/* The path this build took (see the top of the file). */
const char *graves_isa(void) { return GRAVES_ISA; }

/* The backward pass runs with MXCSR's flush-to-zero bit (0x8000) set on x86 and restores the caller's mode on exit:
 * a product that would be subnormal is 0. Subnormals appear where a component's weight given z_<d has decayed to
 * about 1e-38, and each operation on one takes a microcode assist; they made large problems 1.4-2x slower. Inputs
 * are read as they are (denormals-are-zero stays off). Other architectures keep gradual underflow. */
#ifndef GRAVES_FLUSH
#define GRAVES_FLUSH 0x8000u
#endif
static inline unsigned flush_begin(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned old = _mm_getcsr();
    _mm_setcsr(old | GRAVES_FLUSH);
    return old;
#else
    return 0;
#endif
}
static inline void flush_end(unsigned old) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(old);
#else
    (void)old;
#endif
}

#define HALF_LOG_2PI 0.91893853320467274178
#define SQRT_HALF_PI 1.25331413731550025121
#define INV_SQRT2 0.70710678118654752440

/* ---- float helpers: branch-free so that loops calling them vectorise ---------------------------------------- */

static inline float bits_to_float(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static inline uint32_t float_to_bits(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }

/* x rounded to the nearest integer (ties to even, as rintf in the default rounding mode) for |x| < 2^22, by adding
 * and removing 1.5 * 2^23: no call to libm where the target lacks a rounding instruction (SSE2, the plain path). */
static inline float round_f32(float x) {
    const float magic = 12582912.0f;
    return (x + magic) - magic;
}

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
    float n = round_f32(xc * 1.44269504088896341f);
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

/* exp(x) for x <= 0 (or NaN): exact 0 below -87.3. */
static inline float expneg_f32(float x) {
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    float xc = x < -87.3f ? -87.3f : x;
    float n = round_f32(xc * 1.44269504088896341f);
    float r = (xc - n * ln2_hi) - n * ln2_lo;
    float y = exp_taylor_f32(r) * bits_to_float((uint32_t)((int32_t)n + 127) << 23);
    y = x < -87.3f ? 0.0f : y;
    return x != x ? x : y;
}
static inline double expneg_f64(double x) { return exp(x); }

/* log(x) for a normal, finite x > 0, less `shift` ln 2: x = 2^e m with m in [sqrt(1/2), sqrt(2)),
 * log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, by its series to s^9 (truncation < 1e-9). */
static inline float log_normal_f32(float x, int32_t shift) {
    uint32_t b = float_to_bits(x);
    int32_t e = (int32_t)((b >> 23) & 0xff) - 127 - shift;
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
    return (float)e * 0.693147180559945309f + s * p;
}

/* log(x) for every float: subnormal x rescaled first; 0, inf, NaN and negative x as libm. */
static inline float log_f32(float x) {
    int sub = x < 1.17549435e-38f;
    float y = log_normal_f32(sub ? x * 8388608.0f : x, sub ? 23 : 0); /* 2^23 */
    y = x == INFINITY ? x : y;
    y = x == 0.0f ? -INFINITY : y;
    return (x != x || x < 0.0f) ? NAN : y;
}

/* log of a scale (a normal, finite x > 0) without the special cases: an invalid scale still poisons the result
 * through 1 / sigma. */
static inline float logpos_f32(float x) { return log_normal_f32(x, 0); }
static inline double logpos_f64(double x) { return log(x); }

/* Mills ratio R(t) = (1 - Phi(t)) / phi(t), t >= 0. float: R = sqrt(pi/2) u g(u), u = 1 / (1 + y / 2),
 * y = t / sqrt 2, g(u) = erfcx(y) / u a polynomial of degree 10 in u fitted by scripts/fit_mills.py (relative error
 * < 3.6e-7 evaluated in float; no exp, unlike Numerical Recipes' erfcx = u exp(P(u)), which it replaced). */
static inline float mills_f32(float t) {
    float u = 1.0f / (1.0f + 0.5f * (float)INV_SQRT2 * t);
    float p = 4.235430938e-02f;
    p = p * u - 2.308655805e-01f;
    p = p * u + 4.861942737e-01f;
    p = p * u - 4.469938343e-01f;
    p = p * u + 1.270998497e-01f;
    p = p * u - 5.723649210e-02f;
    p = p * u + 9.300151267e-02f;
    p = p * u + 1.753767094e-01f;
    p = p * u + 2.468805942e-01f;
    p = p * u + 2.820938525e-01f;
    p = p * u + 2.820947948e-01f;
    return (float)SQRT_HALF_PI * u * p;
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

/* ---- V x V transposes between per-sample rows and the lane layout (the kernel's lanes are samples) --------- */

/* A tile's V stores go to V rows a sample's K x D apart, lines that have usually left the cache since the last call:
 * each store waits for its line to be read in first, and V streams of them defeat the hardware prefetcher. So each
 * tile asks for the lines STORE_AHEAD floats further along its rows (the next tiles' lines) to be fetched for
 * writing: 9.0 -> 7.1 ms for the kernel at B = 100, K = 40, D = 200 (AVX-512), no change at small sizes. Full tiles
 * use plain rather than masked loads and stores. */
#define STORE_AHEAD 64

/* float with AVX-512: a tile of 16 rows x m <= 16 columns in 16 registers, transposed by shuffles (the kernel's
 * FN(tile_in) / FN(tile_out) say what a tile is; they are the plain loops used otherwise). */
#if defined(__AVX512F__)
#include <immintrin.h>
static inline void transpose16_f32(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int c = 0; c < 4; ++c) {
        t[c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);
        t[4 + c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
        t[8 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        t[12 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
    }
    for (int c = 0; c < 4; ++c) {
        r[c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0xdd);
        r[4 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0xdd);
    }
}
static inline void tile16_in_f32(const float *const *rows, int64_t off, int64_t m, float *restrict dst,
                                 int64_t stride) {
    const __mmask16 mask = (__mmask16)((1u << m) - 1);
    __m512 r[16];
    if (m == 16)
        for (int j = 0; j < 16; ++j) r[j] = _mm512_loadu_ps(rows[j] + off);
    else
        for (int j = 0; j < 16; ++j) r[j] = _mm512_maskz_loadu_ps(mask, rows[j] + off);
    transpose16_f32(r);
    for (int c = 0; c < m; ++c) _mm512_storeu_ps(dst + stride * c, r[c]);
}
static inline void tile16_out_f32(const float *restrict src, int64_t stride, int64_t m, int64_t lanes,
                                  float *const *rows, int64_t off) {
    const __mmask16 mask = (__mmask16)((1u << m) - 1);
    __m512 r[16];
    for (int c = 0; c < 16; ++c) r[c] = c < m ? _mm512_loadu_ps(src + stride * c) : _mm512_setzero_ps();
    transpose16_f32(r);
    for (int j = 0; j < lanes; ++j) __builtin_prefetch(rows[j] + off + STORE_AHEAD, 1, 3);
    if (m == 16)
        for (int j = 0; j < lanes; ++j) _mm512_storeu_ps(rows[j] + off, r[j]);
    else
        for (int j = 0; j < lanes; ++j) _mm512_mask_storeu_ps(rows[j] + off, mask, r[j]);
}
#elif defined(__AVX2__)
#include <immintrin.h>
/* float with AVX2: 8 rows x m <= 8 columns in 8 registers, transposed by unpacks, shuffles and lane swaps. */
static inline void transpose8_f32(__m256 r[8]) {
    __m256 t[8], s[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        s[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
        s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    for (int c = 0; c < 4; ++c) {
        r[c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x31);
    }
}
static inline __m256i mask8(int64_t m) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline void tile8_in_f32(const float *const *rows, int64_t off, int64_t m, float *restrict dst,
                                int64_t stride) {
    const __m256i mask = mask8(m);
    __m256 r[8];
    if (m == 8)
        for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(rows[j] + off);
    else
        for (int j = 0; j < 8; ++j) r[j] = _mm256_maskload_ps(rows[j] + off, mask);
    transpose8_f32(r);
    for (int c = 0; c < m; ++c) _mm256_storeu_ps(dst + stride * c, r[c]);
}
static inline void tile8_out_f32(const float *restrict src, int64_t stride, int64_t m, int64_t lanes,
                                 float *const *rows, int64_t off) {
    const __m256i mask = mask8(m);
    __m256 r[8];
    for (int c = 0; c < 8; ++c) r[c] = c < m ? _mm256_loadu_ps(src + stride * c) : _mm256_setzero_ps();
    transpose8_f32(r);
    for (int j = 0; j < lanes; ++j) __builtin_prefetch(rows[j] + off + STORE_AHEAD, 1, 3);
    if (m == 8)
        for (int j = 0; j < lanes; ++j) _mm256_storeu_ps(rows[j] + off, r[j]);
    else
        for (int j = 0; j < lanes; ++j) _mm256_maskstore_ps(rows[j] + off, mask, r[j]);
}
#endif

/* ---- the kernel, once per type (this file includes itself with `real` defined) ---------------------------- */

#define GRAVES_BODY
#define real float
#define EXP exp_f32
#define EXPNEG expneg_f32
#define LOG log_f32
#define LOGPOS logpos_f32
#define MILLS mills_f32
#define FN(name) graves_##name##_f32
#if defined(__AVX512F__)
#define TILE_IN tile16_in_f32
#define TILE_OUT tile16_out_f32
#elif defined(__AVX2__)
#define TILE_IN tile8_in_f32
#define TILE_OUT tile8_out_f32
#endif
#include __FILE__
#undef real
#undef EXP
#undef EXPNEG
#undef LOG
#undef LOGPOS
#undef MILLS
#undef FN
#define real double
#define EXP exp_f64
#define EXPNEG expneg_f64
#define LOG log_f64
#define LOGPOS logpos_f64
#define MILLS mills_f64
#define FN(name) graves_##name##_f64
#include __FILE__

#else /* GRAVES_BODY: the kernel for one type */

/* Lanes are samples: a group of V samples (one vector of `real`, VECTOR_BYTES wide) is worked on together, each (k, d) entry
 * of the group stored as V consecutive values, one per sample. Every loop below has the lane loop innermost with
 * a fixed trip count, so the compiler turns it into whole-vector operations: the reductions over k and the running
 * sums over d become element-wise (no horizontal sums, no scalar remainders whatever K and D are), and the sweep
 * is vectorised across samples. The group's inputs are transposed in (and its gradients out) once. */
#define V ((int64_t)(VECTOR_BYTES / sizeof(real)))
#define LANES _Pragma("GCC unroll 1") _Pragma("GCC ivdep") for (int64_t j = 0; j < V; ++j)

/* Scratch, in units of `real`: four [D, K, V] arrays, two [D, V], nine [K, V]. d outermost (a sample's rows are
 * [K, D]: the gather and scatter transpose): the loops over k at one d, in both passes, then read and write every
 * array contiguously (in [K, D, V] those accesses lie D V apart, a few kilobytes, and the streams contend for the
 * same cache sets). The [D, K, V] arrays are what the cache has to hold between the two passes, so each is used
 * three times over: loc's storage holds x once the coefficients have read loc at (k, d), then the loc gradient once
 * the sweep has read x there; scale's storage holds 1 / sigma, then the scale gradient; s = -x / sigma is formed
 * again in the sweep (the same product, so the same value) rather than stored. Four arrays rather than seven: 2 MB
 * instead of 3.6 MB at K = 40, D = 200 with 16 lanes (on its own this measured no faster there; the store prefetch
 * and the flush-to-zero below are what did). */
int64_t FN(scratch)(int64_t K, int64_t D) { return (4 * K * D + 2 * D + 9 * K) * V; }

typedef struct {
    real *MU, *SG, *R, *CH, *Z, *GZ, *L, *B, *RP, *E, *W, *WF, *CT, *IV, *C;
} FN(work);

static FN(work) FN(layout)(real *scratch, int64_t K, int64_t D) {
    const int64_t KDV = K * D * V, KV = K * V;
    FN(work) w;
    w.MU = scratch; w.SG = w.MU + KDV; w.R = w.SG + KDV; w.CH = w.R + KDV; w.Z = w.CH + KDV; w.GZ = w.Z + D * V;
    w.L = w.GZ + D * V; w.B = w.L + KV; w.RP = w.B + KV; w.E = w.RP + KV; w.W = w.E + KV; w.WF = w.W + KV;
    w.CT = w.WF + KV; w.IV = w.CT + KV; w.C = w.IV + KV;
    return w;
}

/* The coefficients r, chat, s = -x / sigma, x and 1 / sigma of a group, one dimension at a time (everything at d
 * needs only d and the running state from d - 1). Two identities save work: r_kd = w_k,d+1 (the weights given
 * z_<=d), so w is r one dimension back, and logsumexp_k a_k,d+1 = log f_d + logsumexp_k a_kd, so 1 / f_d needs
 * one exp per d. Per (k, d) that leaves one log (sigma), one exp (r) and the Mills ratio's polynomial. */
/* Asks for part d of D of the n values at p (the next group's parameters, contiguous in memory) to be brought
 * into the cache, so that reading them overlaps this group's arithmetic instead of following it. */
static inline void FN(prefetch_part)(const real *p, int64_t n, int64_t d, int64_t D) {
    if (!p) return;
    const char *lo = (const char *)(p + n * d / D), *hi = (const char *)(p + n * (d + 1) / D);
    for (; lo < hi; lo += 64) __builtin_prefetch(lo, 0, 2);
}

static void FN(coefficients)(int64_t K, int64_t D, FN(work) w, const real *next_loc, const real *next_scale,
                             int64_t next_n) {
    real *restrict B = w.B, *restrict RP = w.RP, *restrict E = w.E, *restrict W = w.W, *restrict WF = w.WF;
    real *restrict CT = w.CT, *restrict IV = w.IV, *restrict R = w.R, *restrict CH = w.CH, *restrict L = w.L;
    /* read at (k, d), then overwritten there: x into MU, 1 / sigma into SG */
    real *restrict MU = w.MU, *restrict SG = w.SG;
    real m0[V], s0[V], lse_prev[V], mx[V], sum[V], is[V], invf[V], lsum[V], tsum[V];
    LANES { m0[j] = -INFINITY; s0[j] = 0; }
    for (int64_t k = 0; k < K; ++k)
        LANES m0[j] = L[k * V + j] > m0[j] ? L[k * V + j] : m0[j];
    for (int64_t k = 0; k < K; ++k)
        LANES s0[j] += EXP(L[k * V + j] - m0[j]);
    LANES lse_prev[j] = m0[j] + LOG(s0[j]); /* logsumexp_k a_k0 */
    for (int64_t k = 0; k < K; ++k)
        LANES {
            B[k * V + j] = L[k * V + j];
            RP[k * V + j] = EXP(L[k * V + j] - m0[j]) / s0[j]; /* w_k0 = softmax(logits) */
        }
    for (int64_t d = 0; d < D; ++d) {
        const real *restrict zd = w.Z + d * V;
        FN(prefetch_part)(next_loc, next_n, d, D);
        FN(prefetch_part)(next_scale, next_n, d, D);
        /* x = (z - mu) / sigma; b_kd = log pi_k + sum_{j<=d} log phi_kj (up to the constant -log sqrt(2 pi),
         * which cancels in every ratio), the unnormalised log r, and its maximum over k */
        LANES mx[j] = -INFINITY;
        for (int64_t k = 0; k < K; ++k) {
            const int64_t p = (d * K + k) * V;
            LANES {
                real iv = (real)1 / SG[p + j], x = (zd[j] - MU[p + j]) * iv;
                real b = B[k * V + j] + ((real)-0.5 * x * x - LOGPOS(SG[p + j]));
                MU[p + j] = x;
                IV[k * V + j] = iv;
                B[k * V + j] = b;
                mx[j] = b > mx[j] ? b : mx[j];
            }
        }
        LANES sum[j] = 0;
        for (int64_t k = 0; k < K; ++k)
            LANES {
                real e = EXPNEG(B[k * V + j] - mx[j]);
                E[k * V + j] = e;
                sum[j] += e;
            }
        LANES {
            real lse = mx[j] + LOG(sum[j]); /* logsumexp_k b_kd = logsumexp_k a_k,d+1 */
            is[j] = (real)1 / sum[j];
            invf[j] = EXP(lse_prev[j] - lse + (real)HALF_LOG_2PI);
            lse_prev[j] = lse;
            lsum[j] = 0;
            tsum[j] = 0;
        }
        /* r = E / sum, w_kd = r_k,d-1, w / f, and the side test */
        for (int64_t k = 0; k < K; ++k) {
            const int64_t p = (d * K + k) * V;
            LANES {
                real r = E[k * V + j] * is[j], wn = RP[k * V + j], x = MU[p + j];
                RP[k * V + j] = r;
                R[p + j] = r;
                W[k * V + j] = wn;
                WF[k * V + j] = wn > 0 ? wn * invf[j] : 0; /* 0 * inf (f underflowed, w negligible) is 0 */
                lsum[j] += wn * (x / (1 + (x < 0 ? -x : x))); /* crude side test: u_d < 1/2 roughly */
            }
        }
        /* the tail form whose terms are small (see _tail_coefficients): w T / f = r sigma R(|x|) */
        for (int64_t k = 0; k < K; ++k) {
            const int64_t p = (d * K + k) * V;
            LANES {
                real x = MU[p + j], t = x < 0 ? -x : x;
                real small = R[p + j] * SG[p + j] * MILLS(t);
                real tail = ((lsum[j] < 0) == (x < 0)) ? small : WF[k * V + j] - small;
                CT[k * V + j] = tail;
                tsum[j] += tail;
                SG[p + j] = IV[k * V + j];
            }
        }
        for (int64_t k = 0; k < K; ++k) {
            const int64_t p = (d * K + k) * V;
            LANES {
                real wt = W[k * V + j] * tsum[j];
                CH[p + j] = lsum[j] < 0 ? CT[k * V + j] - wt : wt - CT[k * V + j];
            }
        }
    }
}

/* The sweep, d = D-1 .. 0: v'_d = g_d - sum_k s_kd C_k, then with C_kd = C_k the parameter gradients of dimension
 * d (into the storage of x and 1 / sigma, read at (k, d) just before), then C_k += v'_d chat_kd. C ends as
 * sum_d v'_d chat_kd. s = -x / sigma is -x times the stored 1 / sigma, as the coefficients had it. */
static void FN(sweep)(int64_t K, int64_t D, FN(work) w) {
    const real *restrict R = w.R, *restrict CH = w.CH, *restrict GZ = w.GZ;
    /* x and 1 / sigma in, the loc and scale gradients out */
    real *restrict C = w.C, *restrict X = w.MU, *restrict INV = w.SG;
    real v[V];
    for (int64_t i = 0; i < K * V; ++i) C[i] = 0;
    for (int64_t d = D - 1; d >= 0; --d) {
        LANES v[j] = GZ[d * V + j];
        for (int64_t k = 0; k < K; ++k) {
            const int64_t p = (d * K + k) * V;
            LANES {
                const real s = -X[p + j] * INV[p + j];
                v[j] -= s * C[k * V + j];
            }
        }
        for (int64_t k = 0; k < K; ++k) {
            const int64_t p = (d * K + k) * V;
            LANES {
                const real c = C[k * V + j], vr = v[j] * R[p + j], x = X[p + j], iv = INV[p + j];
                const real s = -x * iv;
                X[p + j] = vr + c * s;                   /* dL/dmu_kd */
                INV[p + j] = vr * x - c * (x * x - 1) * iv; /* dL/dsigma_kd */
                C[k * V + j] = c + v[j] * CH[p + j];
            }
        }
    }
}

/* The forward draw, in two steps. The index: k = #{j < K-1 : F_j <= u S}, the inverse CDF of softmax(logits) at
 * u ~ U[0, 1) (F the running sum of exp(logit - max), S its total), as DiagGaussianMixture.index_from_uniform. */
void FN(sample_index)(int64_t N, int64_t K, const real *logits, const real *u, int64_t *index) {
    real e[64]; /* the weights, kept when K <= 64 (computed twice otherwise, the same way: the same values) */
    for (int64_t n = 0; n < N; ++n) {
        const real *ln = logits + n * K;
        real m = -INFINITY, total = 0, acc = 0;
        for (int64_t k = 0; k < K; ++k) m = ln[k] > m ? ln[k] : m;
        for (int64_t k = 0; k < K; ++k) {
            const real ek = EXPNEG(ln[k] - m);
            if (K <= 64) e[k] = ek;
            total += ek;
        }
        const real threshold = u[n] * total;
        int64_t pick = 0;
        for (int64_t k = 0; k < K - 1; ++k) {
            acc += K <= 64 ? e[k] : EXPNEG(ln[k] - m);
            pick += acc <= threshold;
        }
        index[n] = pick;
    }
}

/* Then z = loc_k + scale_k eps for the drawn k. Returns how many indices lay outside [0, K) (their rows are left
 * unwritten; the caller raises). */
int64_t FN(compose)(int64_t N, int64_t K, int64_t D, const real *loc, const real *scale, const int64_t *index,
                    const real *eps, real *z) {
    int64_t bad = 0;
    for (int64_t n = 0; n < N; ++n) {
        const int64_t k = index[n];
        if (k < 0 || k >= K) {
            ++bad;
            continue;
        }
        const real *mu = loc + (n * K + k) * D, *sg = scale + (n * K + k) * D, *e = eps + n * D;
        real *zn = z + n * D;
        for (int64_t d = 0; d < D; ++d) zn[d] = mu[d] + sg[d] * e[d];
    }
    return bad;
}

/* DiagGaussianMixture's argument checks, one pass over each parameter and vectorised (x - x is 0 for a finite x and
 * NaN otherwise; the running minimum finds a scale <= 0). Returns a set of bits: 1 a logit is NaN or +inf, 2 every
 * logit of some row is -inf (or NaN), 4 loc holds an inf or NaN, 8 scale does, 16 some scale is <= 0. */
static int64_t FN(check_values)(int64_t n, const real *p, int positive) {
    real acc[V], mn[V], tail = 0, low = INFINITY;
    LANES { acc[j] = 0; mn[j] = INFINITY; }
    int64_t i = 0;
    for (; i + V <= n; i += V)
        LANES {
            const real x = p[i + j];
            acc[j] += x - x;
            mn[j] = x < mn[j] ? x : mn[j];
        }
    for (; i < n; ++i) {
        tail += p[i] - p[i];
        low = p[i] < low ? p[i] : low;
    }
    LANES { tail += acc[j]; low = mn[j] < low ? mn[j] : low; }
    return (tail != 0 ? 1 : 0) | (positive && !(low > 0) ? 2 : 0);
}

int64_t FN(check)(int64_t rows, int64_t K, const real *logits, int64_t n_loc, const real *loc, int64_t n_scale,
                  const real *scale) {
    int64_t bad = 0;
    for (int64_t n = 0; n < rows; ++n) {
        real mx = -INFINITY;
        for (int64_t k = 0; k < K; ++k) {
            const real x = logits[n * K + k];
            bad |= (x != x || x == INFINITY) ? 1 : 0;
            mx = x > mx ? x : mx;
        }
        bad |= mx == -INFINITY ? 2 : 0;
    }
    bad |= FN(check_values)(n_loc, loc, 0) & 1 ? 4 : 0;
    const int64_t s = FN(check_values)(n_scale, scale, 1);
    return bad | (s & 1 ? 8 : 0) | (s & 2 ? 16 : 0);
}

/* Not Graves: the Bernoulli log-likelihood of a decoder's pixel logits, for the IWAE evaluation (built and loaded
 * with this file so that it needs no second compiled library). out[r] = sum_i x_i a_i - softplus(a_i) over the
 * `dim` pixels of row r of a [rows, dim], with x [n_x, dim] broadcast over the rows (row r reads x's row r % n_x),
 * in one pass: softplus(a) = max(a, 0) + log(1 + exp(-|a|)) with this file's vectorised exp and log, the logs of
 * up to 8 pixels of a lane taken at once as the log of their product (each factor is in (1, 2], so the product
 * stays below 256): one log per 8 pixels. In float the roundings of 1 + exp(-|a|) and of the product cost at most
 * about 2^-24 absolute per pixel, as in mixvae/models/ops.py. */
void FN(bernoulli)(int64_t rows, int64_t n_x, int64_t dim, const real *a, const real *x, real *out) {
    for (int64_t r = 0; r < rows; ++r) {
        const real *restrict ar = a + r * dim, *restrict xr = x + (r % n_x) * dim;
        real lin[V], prod[V], logs[V], tail = 0;
        LANES { lin[j] = 0; prod[j] = 1; logs[j] = 0; }
        int64_t i = 0, n = 0;
        for (; i + V <= dim; i += V) {
            LANES {
                const real v = ar[i + j], t = v < 0 ? -v : v;
                lin[j] += xr[i + j] * v - (v > 0 ? v : 0);
                prod[j] *= 1 + EXPNEG(-t);
            }
            if (++n == 8) {
                LANES { logs[j] += LOGPOS(prod[j]); prod[j] = 1; }
                n = 0;
            }
        }
        LANES tail += lin[j] - (logs[j] + LOGPOS(prod[j]));
        for (; i < dim; ++i) {
            const real v = ar[i], t = v < 0 ? -v : v;
            tail += xr[i] * v - ((v > 0 ? v : 0) + LOGPOS(1 + EXPNEG(-t)));
        }
        out[r] = tail;
    }
}

/* Not Graves either: the implicit-reparameterization derivative dx/dalpha of standard gamma samples (the same two
 * expansions as mixvae/distributions/gamma.py, whose module docstring derives them), computed in double whatever
 * `real` is, one element at a time: each stops at its own convergence (the PyTorch path iterates a whole batch
 * until its slowest element converges). alpha [n] > 0, x [n] > 0 (clamped to DBL_MIN as there) -> out [n]. */
static double FN(digamma)(double a) { /* a > 0: recurrence up to a >= 10, then the asymptotic series */
    double r = 0;
    while (a < 10) { r -= 1 / a; a += 1; }
    const double f = 1 / (a * a);
    const double t = f * (-1.0 / 12 + f * (1.0 / 120 + f * (-1.0 / 252 + f * (1.0 / 240 + f * (-1.0 / 132
                     + f * (691.0 / 32760 + f * (-1.0 / 12)))))));
    return r + log(a) - 0.5 / a + t;
}

void FN(gamma_grad)(int64_t n, const real *alpha, const real *xs, int64_t max_iter, real *out) {
    const double eps = 0x1p-53;
    for (int64_t i = 0; i < n; ++i) {
        const double a = (double)alpha[i];
        double x = (double)xs[i];
        x = x > 0x1p-1022 ? x : 0x1p-1022;
        double g;
        if (x < a + 1) { /* series */
            double t = 1, s = 1, h = 0, ds = 0;
            for (int64_t m = 1; m <= max_iter; ++m) {
                const double am = a + m;
                t = t * x / am;
                h = h - 1 / am;
                s = s + t;
                ds = ds + t * h;
                if (t <= eps * s && t * fabs(h) <= eps * fabs(ds)) break;
            }
            g = -(x / a) * (s * (log(x) - FN(digamma)(a + 1)) + ds);
        } else { /* continued fraction of Q, convergents renormalised by B_n */
            double ap = 1, bp = 0, dap = 0, dbp = 0, ac = x + 1 - a, bc = 1, dac = -1, dbc = 0;
            double k = ac, dk = dac;
            for (int64_t m = 1; m <= max_iter; ++m) {
                const double bn = x + (double)(2 * m + 1) - a, an = -(double)m * ((double)m - a);
                const double anew = bn * ac + an * ap, bnew = bn * bc + an * bp;
                const double danew = -ac + bn * dac + m * ap + an * dap, dbnew = -bc + bn * dbc + m * bp + an * dbp;
                const double sc = 1 / bnew;
                ap = ac * sc; bp = bc * sc; dap = dac * sc; dbp = dbc * sc;
                ac = anew * sc; bc = 1; dac = danew * sc; dbc = dbnew * sc;
                const double knew = ac, dknew = dac - ac * dbc;
                const int settled = fabs(knew - k) <= 4 * eps * fabs(knew)
                                    && fabs(dknew - dk) <= 4 * eps * (fabs(dac) + fabs(ac * dbc));
                k = knew; dk = dknew;
                if (settled) break;
            }
            const double c = 1 / k, dc = -dk / (k * k);
            g = x * (c * (log(x) - FN(digamma)(a)) + dc);
        }
        out[i] = (real)g;
    }
}

/* And the von Mises concentration derivative dx/dkappa of centred samples x in [-pi, pi] (the quadratures of
 * mixvae/distributions/von_mises.py, whose module docstring derives them), in double, one element at a time and
 * only the form its element needs (bulk: nb Gauss-Legendre nodes on [0, y]; tail: nt nodes on a geometric grid
 * from y to pi). kappa [n], x [n], a [n] = I1(kappa) / I0(kappa) (from the caller: libm has no Bessel functions
 * of real order), nodes and weights on [0, 1] -> out [n]. pi = pi_hi + pi_lo as there. */
void FN(von_mises_grad)(int64_t n, const double *kappa, const double *xs, const double *amean, int64_t nb,
                        const double *vb, const double *wb, int64_t nt, const double *vt, const double *wt,
                        real *out) {
    const double pi_hi = 3.141592653589793, pi_lo = 1.2246467991473532e-16;
    for (int64_t i = 0; i < n; ++i) {
        const double k = kappa[i], xx = xs[i], a = amean[i], one_minus_a = 1 - a;
        double y = fabs(xx), sign = xx > 0 ? 1 : (xx < 0 ? -1 : 0);
        if (y > pi_hi) { y = (2 * pi_hi - y) + 2 * pi_lo; sign = -sign; }
        double width = (pi_hi - y) + pi_lo;
        width = width > 1e-300 ? width : 1e-300;
        double g = 0;
        const double sy = sin(0.5 * y), cy = cos(0.5 * y);
        if (y <= acos(a)) { /* bulk: -int_0^y e^(k (cos t - cos y)) ((1 - A) - 2 sin^2(t/2)) dt */
            for (int64_t j = 0; j < nb; ++j) {
                const double t = y * vb[j], st = sin(0.5 * t), ct = cos(0.5 * t);
                /* sin((t + y)/2) by the sum formula (two non-negative terms for t, y in [0, pi]: no cancellation);
                 * sin((t - y)/2) directly (it is the small factor near t = y) */
                const double lr = -2 * k * (st * cy + ct * sy) * sin(0.5 * (t - y));
                g += wb[j] * (exp(lr) * (one_minus_a - 2 * st * st));
            }
            g = -y * g;
        } else { /* tail: int_y^pi, t = y + W expm1(beta v) / expm1(beta) */
            const double scale = 1 / (k * sin(y) + sqrt(k));
            double beta = log1p(width / scale);
            beta = beta > 1e-30 ? beta : 1e-30;
            const double denom = expm1(beta);
            for (int64_t j = 0; j < nt; ++j) {
                const double e = expm1(beta * vt[j]), t = y + width * e / denom;
                const double dt_dv = width * beta * (e + 1) / denom, st = sin(0.5 * t), ct = cos(0.5 * t);
                const double lr = -2 * k * (st * cy + ct * sy) * sin(0.5 * (t - y));
                g += wt[j] * (exp(lr) * (one_minus_a - 2 * st * st) * dt_dv);
            }
        }
        out[i] = (real)(g * sign);
    }
}

/* Transposes between the V rows of a group (one per sample) and the lane layout, a V x V tile at a time:
 * dst[c * stride + j] = rows[j][off + c] for c < m <= V, and back (AVX-512 / AVX2 shuffles for float where the
 * compiler targets them, these plain loops otherwise). */
static inline void FN(tile_in)(const real *const *rows, int64_t off, int64_t m, real *restrict dst, int64_t stride) {
    for (int64_t j = 0; j < V; ++j)
        for (int64_t c = 0; c < m; ++c) dst[c * stride + j] = rows[j][off + c];
}
static inline void FN(tile_out)(const real *restrict src, int64_t stride, int64_t m, int64_t lanes, real *const *rows,
                                int64_t off) {
    for (int64_t j = 0; j < lanes; ++j)
        for (int64_t c = 0; c < m; ++c) rows[j][off + c] = src[c * stride + j];
}
#ifndef TILE_IN
#define TILE_IN FN(tile_in)
#define TILE_OUT FN(tile_out)
#endif

/* rows [n] per sample -> dst [n, V] */
static void FN(gather)(const real *const *rows, int64_t n, real *restrict dst) {
    for (int64_t i0 = 0; i0 < n; i0 += V) TILE_IN(rows, i0, n - i0 < V ? n - i0 : V, dst + i0 * V, V);
}

static void FN(scatter)(const real *restrict src, int64_t n, int64_t lanes, real *const *rows) {
    for (int64_t i0 = 0; i0 < n; i0 += V) TILE_OUT(src + i0 * V, V, n - i0 < V ? n - i0 : V, lanes, rows, i0);
}

/* rows [K, D] per sample -> dst [D, K, V] (the kernel's layout), and back */
static void FN(gather_kd)(const real *const *rows, int64_t K, int64_t D, real *restrict dst) {
    for (int64_t k = 0; k < K; ++k)
        for (int64_t d0 = 0; d0 < D; d0 += V)
            TILE_IN(rows, k * D + d0, D - d0 < V ? D - d0 : V, dst + (d0 * K + k) * V, K * V);
}

static void FN(scatter_kd)(const real *restrict src, int64_t K, int64_t D, int64_t lanes, real *const *rows) {
    for (int64_t k = 0; k < K; ++k)
        for (int64_t d0 = 0; d0 < D; d0 += V)
            TILE_OUT(src + (d0 * K + k) * V, K * V, D - d0 < V ? D - d0 : V, lanes, rows, k * D + d0);
}

/* dL/d(logits, loc, scale) of samples n0 .. n1-1, V at a time. A last, partial group fills its spare lanes with
 * copies of its last sample (lanes never mix, so every sample's result is the same whatever group it is in). */
void FN(vjp)(int64_t n0, int64_t n1, int64_t K, int64_t D, const real *grad_z, const real *z, const real *logits,
             const real *loc, const real *scale, real *grad_logits, real *grad_loc, real *grad_scale,
             real *scratch) {
    const int64_t KD = K * D;
    const unsigned csr = flush_begin();
    FN(work) w = FN(layout)(scratch, K, D);
    for (int64_t n = n0; n < n1; n += V) {
        const int64_t lanes = n1 - n < V ? n1 - n : V;
        const real *rows[5][V];
        LANES {
            const int64_t m = n + (j < lanes ? j : lanes - 1);
            rows[0][j] = loc + m * KD; rows[1][j] = scale + m * KD; rows[2][j] = z + m * D;
            rows[3][j] = grad_z + m * D; rows[4][j] = logits + m * K;
        }
        FN(gather_kd)(rows[0], K, D, w.MU);
        FN(gather_kd)(rows[1], K, D, w.SG);
        FN(gather)(rows[2], D, w.Z);
        FN(gather)(rows[3], D, w.GZ);
        FN(gather)(rows[4], K, w.L);
        /* samples in the next group, whose parameters the coefficients pass prefetches: only while this group's
         * scratch and those parameters (six K x D x V arrays) fit in 512 KB, a fair share of an L2. Past that the
         * prefetched lines evict the scratch the sweep is about to read (B = 100, K = 40, D = 200: 6.7 ms with the
         * prefetch, 5.7 without; B = 1000, K = 10, D = 50: 2.25 with, 2.4 without). */
        const int64_t fits = 6 * KD * V * (int64_t)sizeof(real) <= 512 * 1024;
        const int64_t next = fits && n + V < n1 ? (n1 - n - V < V ? n1 - n - V : V) : 0;
        FN(coefficients)(K, D, w, next ? loc + (n + V) * KD : 0, next ? scale + (n + V) * KD : 0, next * KD);
        FN(sweep)(K, D, w);
        real *out[3][V];
        LANES {
            const int64_t m = n + (j < lanes ? j : lanes - 1);
            out[0][j] = grad_loc + m * KD; out[1][j] = grad_scale + m * KD; out[2][j] = grad_logits + m * K;
        }
        for (int64_t i = 0; i < K * V; ++i) w.C[i] = -w.C[i]; /* dL/dl_k = -sum_d v'_d chat_kd */
        FN(scatter_kd)(w.MU, K, D, lanes, out[0]);
        FN(scatter_kd)(w.SG, K, D, lanes, out[1]);
        FN(scatter)(w.C, K, lanes, out[2]);
    }
    flush_end(csr);
}
#undef V
#undef TILE_IN
#undef TILE_OUT
#endif
