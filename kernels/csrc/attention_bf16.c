/* One decode position of one row: RoPE, KV-cache write and grouped-query attention, bf16.
 *
 * For a single row at a single new position the attention block is a few thousand flops
 * spread over ~30 tiny torch ops (each ~5 us of dispatch); here it is one call. It computes
 * exactly what realtime/model.py's torch path does, in the same roundings:
 *   q, k = rotate-half RoPE of the fused projection's q and k heads in fp32, rounded to bf16;
 *   k and v are written to this row's cache at `pos`;
 *   out[h] = softmax(q[h] . K[g]^T / sqrt(hs)) V[g] over keys 0..pos in fp32, rounded to bf16,
 * with head h in group g = h / q_per_kv (litgpt's per-group [q.., k, v] packing of qkv).
 *
 * qkv: (groups, q_per_kv + 2, hs); cos, sin: (hs) fp32 for this position;
 * k_cache, v_cache: (groups, max_seq, hs) of this layer and row; out: (groups * q_per_kv, hs).
 */
#include "bf16.h"
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* RoPE of one head (hs <= 256), rounded to bf16 like torch's .to(bf16), kept as fp32 values. */
static void rope(const uint16_t *x, const float *cos, const float *sin, int64_t hs, float *out) {
    int64_t half = hs / 2;
    for (int64_t d = 0; d < hs; d++) {
        float rotated = d < half ? -bf16_to_f32(x[d + half]) : bf16_to_f32(x[d - half]);
        float v = bf16_to_f32(x[d]) * cos[d] + rotated * sin[d];
        out[d] = bf16_to_f32(f32_to_bf16(v));
    }
}

static float dot(const float *q, const uint16_t *k, int64_t hs) {
    __m256 acc = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 8 <= hs; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), bf16x8(k + d), acc);
    float sum = hsum(acc);
    for (; d < hs; d++) sum += q[d] * bf16_to_f32(k[d]);
    return sum;
}

/* Returns 0, or -1 for sizes it does not take (the caller uses torch). */
int rope_attend_bf16(const uint16_t *qkv, const float *cos, const float *sin, uint16_t *k_cache,
                     uint16_t *v_cache, int64_t max_seq, int64_t pos, int64_t groups,
                     int64_t q_per_kv, int64_t hs, uint16_t *out) {
    if (hs > 256 || hs % 2 || pos < 0 || pos >= max_seq) return -1;
    float *scores = malloc((pos + 1) * sizeof(float));
    if (!scores) return -1;
    float q[256], k[256], acc[256];
    float scale = 1.0f / sqrtf((float)hs);
    for (int64_t g = 0; g < groups; g++) {
        const uint16_t *group = qkv + g * (q_per_kv + 2) * hs;
        uint16_t *keys = k_cache + g * max_seq * hs, *values = v_cache + g * max_seq * hs;
        rope(group + q_per_kv * hs, cos, sin, hs, k);
        for (int64_t d = 0; d < hs; d++) {
            keys[pos * hs + d] = f32_to_bf16(k[d]);  /* k already holds a bf16 value: exact */
            values[pos * hs + d] = group[(q_per_kv + 1) * hs + d];
        }
        for (int64_t j = 0; j < q_per_kv; j++) {
            rope(group + j * hs, cos, sin, hs, q);
            float top = -INFINITY, total = 0.0f;
            for (int64_t t = 0; t <= pos; t++) {
                scores[t] = dot(q, keys + t * hs, hs) * scale;
                top = scores[t] > top ? scores[t] : top;
            }
            for (int64_t d = 0; d < hs; d++) acc[d] = 0.0f;
            for (int64_t t = 0; t <= pos; t++) {
                float p = expf(scores[t] - top);
                total += p;
                for (int64_t d = 0; d < hs; d++) acc[d] += p * bf16_to_f32(values[t * hs + d]);
            }
            uint16_t *o = out + (g * q_per_kv + j) * hs;
            for (int64_t d = 0; d < hs; d++) o[d] = f32_to_bf16(acc[d] / total);
        }
    }
    free(scores);
    return 0;
}
