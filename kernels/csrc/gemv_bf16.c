/* y = x W^T (+ b) for a few rows of x and a bf16 weight, on AVX2 + FMA CPUs, and on
 * AVX-512 BF16 dot products where the CPU has them (gemv_bf16_use_dpbf16).
 *
 * A decode step multiplies 1..8 activation rows by every weight of the model once, so it is
 * bound by how fast the weights stream from memory. torch's bf16 matmul on CPUs without
 * AVX512-BF16 reaches ~17 GB/s here; this loop converts bf16 to fp32 with a shift, keeps 16
 * fp32 accumulators in flight per row block (FMA latency x throughput) and reuses each loaded
 * weight block for all activation rows, reaching ~21 GB/s. Accumulation is fp32; the result is
 * rounded to bf16 (nearest even) like torch's.
 *
 * Layout: w (N, K) row-major bf16; x (M, K) bf16; b (N) bf16 or NULL; y (M, N) bf16.
 * Parallel over blocks of output rows with OpenMP: the library links libgomp.so.1 by soname,
 * so in a process that has loaded torch it shares torch's own runtime and thread count.
 */
#include "bf16.h"
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define BLOCK_ROWS 8   /* output rows per block: 8 x 2 accumulators cover FMA latency */
#define MAX_M 8        /* activation rows per call */

/* Dot product of one weight row with one activation row (fp32 copy), any K. */
static float dot_row(const uint16_t *w, const float *x, int64_t K) {
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        a = _mm256_fmadd_ps(bf16x8(w + k), _mm256_loadu_ps(x + k), a);
        b = _mm256_fmadd_ps(bf16x8(w + k + 8), _mm256_loadu_ps(x + k + 8), b);
    }
    float sum = hsum(_mm256_add_ps(a, b));
    for (; k < K; k++) sum += bf16_to_f32(w[k]) * x[k];
    return sum;
}

/* A full block of BLOCK_ROWS weight rows against one activation row, K % 16 == 0. */
static void dot_block(const uint16_t *w, const float *x, int64_t K, float *out) {
    __m256 a[BLOCK_ROWS], b[BLOCK_ROWS];
    for (int r = 0; r < BLOCK_ROWS; r++) a[r] = b[r] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
        for (int r = 0; r < BLOCK_ROWS; r++) {
            a[r] = _mm256_fmadd_ps(bf16x8(w + r * K + k), x0, a[r]);
            b[r] = _mm256_fmadd_ps(bf16x8(w + r * K + k + 8), x1, b[r]);
        }
    }
    for (int r = 0; r < BLOCK_ROWS; r++) out[r] = hsum(_mm256_add_ps(a[r], b[r]));
}

/* Two weight rows against up to 4 activation rows at once: each weight vector is converted
 * once and used for every activation row (8 accumulators), K % 8 == 0. */
static void dot_pairs(const uint16_t *w, const float *x, int64_t M, int64_t K, float *out) {
    __m256 acc[2][4];
    for (int r = 0; r < 2; r++)
        for (int m = 0; m < 4; m++) acc[r][m] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) {
        __m256 w0 = bf16x8(w + k), w1 = bf16x8(w + K + k);
        for (int64_t m = 0; m < M; m++) {
            __m256 xv = _mm256_loadu_ps(x + m * K + k);
            acc[0][m] = _mm256_fmadd_ps(w0, xv, acc[0][m]);
            acc[1][m] = _mm256_fmadd_ps(w1, xv, acc[1][m]);
        }
    }
    for (int64_t m = 0; m < M; m++) {
        out[m * BLOCK_ROWS] = hsum(acc[0][m]);
        out[m * BLOCK_ROWS + 1] = hsum(acc[1][m]);
    }
}

/* On CPUs with AVX-512 BF16 (Cooper Lake, Sapphire Rapids and later, Zen 4 and later):
 * vdpbf16ps multiplies 32 bf16 pairs and adds them into 16 fp32 sums in one instruction, so
 * the weights need no widening and each 64-byte load feeds it directly. The loops above are
 * bound by their uops on such a CPU, not by memory: on a 2-core Xeon this path streams a decode
 * step's weights at ~24 GB/s where they reach ~17.5. The products are exact in fp32 and summed
 * in fp32 (in another order, and with bf16/fp32 denormals taken as zero, as the instruction
 * does). Compilers from before it (GCC 10, clang 9) leave it out. */
#if (defined(__clang__) && __clang_major__ >= 9) || \
    (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10)
#define HAVE_DPBF16 1
#define DPBF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

/* R weight rows against MR activation rows (both bf16), any K: out[m * BLOCK_ROWS + r].
 * R * MR <= 16 accumulators; each weight load feeds MR products, each x load R. */
DPBF16 static inline __attribute__((always_inline)) void dp_tile(
    const uint16_t *w, const uint16_t *x, int64_t K, const int R, const int MR, float *out) {
    __m512 acc[8][4];
    for (int r = 0; r < R; r++)
        for (int m = 0; m < MR; m++) acc[r][m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512bh xv[4];
        for (int m = 0; m < MR; m++) xv[m] = (__m512bh)_mm512_loadu_si512(x + m * K + k);
        for (int r = 0; r < R; r++) {
            __m512bh wv = (__m512bh)_mm512_loadu_si512(w + r * K + k);
            for (int m = 0; m < MR; m++) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], wv, xv[m]);
        }
    }
    if (k < K) {  /* the tail: the missing pairs load as zeros, which add nothing */
        __mmask32 live = (1u << (K - k)) - 1;
        __m512bh xv[4];
        for (int m = 0; m < MR; m++)
            xv[m] = (__m512bh)_mm512_maskz_loadu_epi16(live, x + m * K + k);
        for (int r = 0; r < R; r++) {
            __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(live, w + r * K + k);
            for (int m = 0; m < MR; m++) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], wv, xv[m]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int m = 0; m < MR; m++) out[m * BLOCK_ROWS + r] = _mm512_reduce_add_ps(acc[r][m]);
}

/* A full block of BLOCK_ROWS weight rows against M activation rows. */
DPBF16 static void dp_block(const uint16_t *w, const uint16_t *x, int64_t M, int64_t K,
                            float *out) {
    if (M <= 2) {  /* all 8 rows at once: 8 or 16 sums */
        if (M == 1) dp_tile(w, x, K, 8, 1, out);
        else dp_tile(w, x, K, 8, 2, out);
        return;
    }
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const uint16_t *xm = x + m0 * K;
        float *o = out + m0 * BLOCK_ROWS;
        for (int r0 = 0; r0 < BLOCK_ROWS; r0 += 4) {
            switch (M - m0 < 4 ? M - m0 : 4) {  /* constant tile shapes: sums in registers */
            case 1: dp_tile(w + r0 * K, xm, K, 4, 1, o + r0); break;
            case 2: dp_tile(w + r0 * K, xm, K, 4, 2, o + r0); break;
            case 3: dp_tile(w + r0 * K, xm, K, 4, 3, o + r0); break;
            default: dp_tile(w + r0 * K, xm, K, 4, 4, o + r0); break;
            }
        }
    }
}
#else
#define HAVE_DPBF16 0
#endif

static int use_dpbf16;  /* set by the caller, who knows the CPU: gemv_bf16_use_dpbf16 */

/* Take the AVX-512 BF16 path (on > 0) or the AVX2 one (on == 0); on < 0 changes nothing.
 * Returns whether the first is taken: never where this build has none. */
int gemv_bf16_use_dpbf16(int on) {
    if (on >= 0) use_dpbf16 = HAVE_DPBF16 && on;
    return use_dpbf16;
}

int gemv_bf16_max_rows(void) { return MAX_M; }

/* The activations in fp32, per calling thread, grown as needed (freed at exit). */
static __thread float *scratch_buf;
static __thread int64_t scratch_len;

static float *scratch(int64_t n) {
    if (n > scratch_len) {
        free(scratch_buf);
        scratch_buf = malloc(n * sizeof(float));
        scratch_len = scratch_buf ? n : 0;
    }
    return scratch_buf;
}

/* Returns 0, -1 when M is out of range (the caller falls back to torch), -2 without memory. */
int gemv_bf16(const uint16_t *w, const uint16_t *x, const uint16_t *bias, uint16_t *y,
              int64_t M, int64_t N, int64_t K) {
    if (M < 1 || M > MAX_M) return -1;
    float *xs = scratch(M * K);  /* (M, K) */
    if (!xs) return -2;
    for (int64_t i = 0; i < M * K; i++) xs[i] = bf16_to_f32(x[i]);
    int64_t blocks = (N + BLOCK_ROWS - 1) / BLOCK_ROWS;
    #pragma omp parallel for schedule(static)
    for (int64_t blk = 0; blk < blocks; blk++) {
        int64_t n0 = blk * BLOCK_ROWS;
        int64_t rows = N - n0 < BLOCK_ROWS ? N - n0 : BLOCK_ROWS;
        float out[MAX_M * BLOCK_ROWS];  /* out[m * BLOCK_ROWS + r] */
#if HAVE_DPBF16
        if (rows == BLOCK_ROWS && use_dpbf16) {
            dp_block(w + n0 * K, x, M, K, out);
        } else
#endif
        if (rows == BLOCK_ROWS && M == 1 && K % 16 == 0) {
            dot_block(w + n0 * K, xs, K, out);
        } else if (rows == BLOCK_ROWS && K % 8 == 0) {
            for (int64_t m0 = 0; m0 < M; m0 += 4)
                for (int r = 0; r < BLOCK_ROWS; r += 2)
                    dot_pairs(w + (n0 + r) * K, xs + m0 * K, M - m0 < 4 ? M - m0 : 4, K,
                              out + m0 * BLOCK_ROWS + r);
        } else {
            for (int64_t m = 0; m < M; m++)
                for (int64_t r = 0; r < rows; r++)
                    out[m * BLOCK_ROWS + r] = dot_row(w + (n0 + r) * K, xs + m * K, K);
        }
        for (int64_t m = 0; m < M; m++)
            for (int64_t r = 0; r < rows; r++) {
                float v = out[m * BLOCK_ROWS + r] + (bias ? bf16_to_f32(bias[n0 + r]) : 0.0f);
                y[m * N + n0 + r] = f32_to_bf16(v);
            }
    }
    return 0;
}
