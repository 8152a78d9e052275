/* A standalone check of the Graves kernel's plain path on another architecture (tests/test_graves_backends.py
 * cross-compiles it for aarch64 and runs it under qemu): reads the inputs and the float64 reference gradients
 * (float64, in the order grad_z [N, D], z [N, D], logits [N, K], loc, scale [N, K, D], then the reference
 * grad_logits [N, K], grad_loc, grad_scale [N, K, D]) from the file argv[1], runs graves_vjp_f64 and graves_vjp_f32,
 * and prints the largest |got - ref| / (1 + |ref|) of each. */
#include <stdio.h>
#include <stdlib.h>
#include KERNEL

static double worst(int64_t n, const double *ref, const double *got64, const float *got32, int use32) {
    double m = 0;
    for (int64_t i = 0; i < n; ++i) {
        double g = use32 ? (double)got32[i] : got64[i], e = fabs(g - ref[i]) / (1 + fabs(ref[i]));
        m = (e > m || e != e) ? e : m;
    }
    return m;
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    const int64_t N = atoll(argv[2]), K = atoll(argv[3]), D = atoll(argv[4]);
    const int64_t sizes[8] = {N * D, N * D, N * K, N * K * D, N * K * D, N * K, N * K * D, N * K * D};
    double *a[8];
    float *f[5];
    FILE *fh = fopen(argv[1], "rb");
    if (!fh) return 3;
    for (int i = 0; i < 8; ++i) {
        a[i] = malloc(sizes[i] * sizeof(double));
        if (fread(a[i], sizeof(double), sizes[i], fh) != (size_t)sizes[i]) return 4;
    }
    fclose(fh);
    for (int i = 0; i < 5; ++i) {
        f[i] = malloc(sizes[i] * sizeof(float));
        for (int64_t j = 0; j < sizes[i]; ++j) f[i][j] = (float)a[i][j];
    }
    double *g64[3];
    float *g32[3];
    for (int i = 0; i < 3; ++i) {
        g64[i] = malloc(sizes[5 + i] * sizeof(double));
        g32[i] = malloc(sizes[5 + i] * sizeof(float));
    }
    double *s64 = malloc(graves_scratch_f64(K, D) * sizeof(double));
    float *s32 = malloc(graves_scratch_f32(K, D) * sizeof(float));
    graves_vjp_f64(0, N, K, D, a[0], a[1], a[2], a[3], a[4], g64[0], g64[1], g64[2], s64);
    graves_vjp_f32(0, N, K, D, f[0], f[1], f[2], f[3], f[4], g32[0], g32[1], g32[2], s32);
    double e64 = 0, e32 = 0;
    for (int i = 0; i < 3; ++i) {
        double x = worst(sizes[5 + i], a[5 + i], g64[i], g32[i], 0), y = worst(sizes[5 + i], a[5 + i], g64[i], g32[i], 1);
        e64 = x > e64 ? x : e64;
        e32 = y > e32 ? y : e32;
    }
    printf("isa %s\nf64_max_error %.3e\nf32_max_error %.3e\n", graves_isa(), e64, e32);
    return 0;
}
