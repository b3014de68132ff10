/* Paged attention on x86 CPUs (AVX2 + FMA), reading K/V where they lie in the paged cache.

   The cache is [blocks, block_size, kv_heads, head_dim] (float32 or bfloat16), one row of
   `block_tables` per sequence. Each of `nseq` sequences has `per_seq` query tokens (1 for a
   decode, the chunk length for a prefill chunk), the last of them at position lens[s] - 1;
   query token k of sequence s attends to the first lens[s] - per_seq + k + 1 positions.
   q and out are float32 [nseq * per_seq, q_heads, head_dim]; q's rows may be `q_stride`
   elements apart (a slice of the fused QKV projection's output), out is contiguous.

   Per query token every cached block is read once for keys and once for values, all heads
   together, so the bytes read are the context's and nothing is copied out first: the
   torch path gathers the whole context into a scratch tensor per layer, which costs a
   write and a read of it on top. Exact softmax in two passes (scores, then values), so
   results match the torch reference to float32 rounding.

   Built on the machine that runs it (engine/core/kernels/cpu_attention.py); where it does
   not build, the torch reference serves. */

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__AVX2__) || !defined(__FMA__)
#error "needs AVX2 and FMA; the torch reference serves this CPU"
#endif

#define MAX_THREADS 64

typedef struct {
    const float *q;
    int64_t q_stride; /* elements between query tokens' rows */
    float *out;
    const void *k, *v;
    int bf16;
    const int32_t *tables;
    int64_t stride;
    const int32_t *lens;
    int64_t per_seq;
    int nq, nkv, d, bs;
    float scale;
    int64_t t0, t1; /* this worker's query tokens */
    int failed;
} Job;

static inline __m256 load8(const void *base, int64_t i, int bf16) {
    if (bf16) { /* bf16 is the top half of a float32 */
        __m128i x = _mm_loadu_si128((const __m128i *)((const uint16_t *)base + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(x), 16));
    }
    return _mm256_loadu_ps((const float *)base + i);
}

/* Cephes' expf: max relative error ~2e-7 over the range softmax uses (x <= 0). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

static inline float hsum8(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_hadd_ps(s, s));
}

/* s[j] = scale * q . k_j for n rows of one block, `row` elements apart; four rows share
   each load of q and one horizontal reduction. */
static inline __attribute__((always_inline)) void block_scores(const float *q, const void *k, int64_t at,
                                                               int64_t row, int n, int nv, int bf16,
                                                               float scale, float *s) {
    int j = 0;
    for (; j + 4 <= n; j += 4) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t r = at + j * row;
        for (int e = 0; e < nv; e++) {
            __m256 qe = _mm256_loadu_ps(q + 8 * e);
            a0 = _mm256_fmadd_ps(qe, load8(k, r + 8 * e, bf16), a0);
            a1 = _mm256_fmadd_ps(qe, load8(k, r + row + 8 * e, bf16), a1);
            a2 = _mm256_fmadd_ps(qe, load8(k, r + 2 * row + 8 * e, bf16), a2);
            a3 = _mm256_fmadd_ps(qe, load8(k, r + 3 * row + 8 * e, bf16), a3);
        }
        __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        __m128 four = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        _mm_storeu_ps(s + j, _mm_mul_ps(four, _mm_set1_ps(scale)));
    }
    for (; j < n; j++) {
        __m256 a = _mm256_setzero_ps();
        for (int e = 0; e < nv; e++) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * e), load8(k, at + j * row + 8 * e, bf16), a);
        s[j] = hsum8(a) * scale;
    }
}

/* acc += sum_j p[j] * v_j over n rows of one block, up to eight output vectors in registers. */
static inline __attribute__((always_inline)) void block_values(const float *p, const void *v, int64_t at,
                                                               int64_t row, int n, int nv, int bf16,
                                                               float *acc) {
    for (int e0 = 0; e0 < nv; e0 += 8) {
        int w = nv - e0 < 8 ? nv - e0 : 8;
        __m256 o[8];
        for (int x = 0; x < w; x++) o[x] = _mm256_loadu_ps(acc + 8 * (e0 + x));
        for (int j = 0; j < n; j++) {
            __m256 pj = _mm256_set1_ps(p[j]);
            for (int x = 0; x < w; x++) o[x] = _mm256_fmadd_ps(pj, load8(v, at + j * row + 8 * (e0 + x), bf16), o[x]);
        }
        for (int x = 0; x < w; x++) _mm256_storeu_ps(acc + 8 * (e0 + x), o[x]);
    }
}

/* exp(s - max) in place; returns the sum. */
static float softmax_numerators(float *s, int len) {
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 8 <= len; j += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(s + j));
    float m = -INFINITY, lanes[8];
    _mm256_storeu_ps(lanes, m8);
    for (int x = 0; x < 8; x++) m = lanes[x] > m ? lanes[x] : m;
    for (int r = j; r < len; r++) m = s[r] > m ? s[r] : m;
    __m256 sum8 = _mm256_setzero_ps(), mv = _mm256_set1_ps(m);
    for (j = 0; j + 8 <= len; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
        _mm256_storeu_ps(s + j, e);
        sum8 = _mm256_add_ps(sum8, e);
    }
    float sum = hsum8(sum8);
    for (; j < len; j++) {
        s[j] = expf(s[j] - m);
        sum += s[j];
    }
    return sum;
}

/* One query token, all its heads, over `len` cached positions; s holds nq * len floats. */
static inline __attribute__((always_inline)) void attend(const Job *jb, int64_t t, int len, int nv, int bf16,
                                                         float *s) {
    int d = 8 * nv, nq = jb->nq, g = nq / jb->nkv, bs = jb->bs;
    int64_t row = (int64_t)jb->nkv * d;
    const float *q = jb->q + t * jb->q_stride;
    float *o = jb->out + t * nq * d;
    const int32_t *table = jb->tables + (t / jb->per_seq) * jb->stride;
    for (int b = 0; b * bs < len; b++) {
        int n = len - b * bs < bs ? len - b * bs : bs;
        int64_t at = (int64_t)table[b] * bs * row;
        for (int h = 0; h < nq; h++)
            block_scores(q + h * d, jb->k, at + (h / g) * d, row, n, nv, bf16, jb->scale, s + h * len + b * bs);
    }
    float inv[256];
    for (int h = 0; h < nq; h++) inv[h] = 1.0f / softmax_numerators(s + h * len, len);
    memset(o, 0, sizeof(float) * nq * d);
    for (int b = 0; b * bs < len; b++) {
        int n = len - b * bs < bs ? len - b * bs : bs;
        int64_t at = (int64_t)table[b] * bs * row;
        for (int h = 0; h < nq; h++)
            block_values(s + h * len + b * bs, jb->v, at + (h / g) * d, row, n, nv, bf16, o + h * d);
    }
    for (int x = 0; x < nq * d; x++) o[x] *= inv[x / d];
}

static int context_of(const Job *jb, int64_t t) {
    int64_t k = t % jb->per_seq;
    return jb->lens[t / jb->per_seq] - (int)(jb->per_seq - k - 1);
}

static void *run(void *arg) {
    const Job *jb = arg;
    int longest = 0;
    for (int64_t t = jb->t0; t < jb->t1; t++) longest = context_of(jb, t) > longest ? context_of(jb, t) : longest;
    float *s = malloc(sizeof(float) * (size_t)jb->nq * (size_t)(longest + 8));
    if (!s) {
        ((Job *)arg)->failed = 1;
        return NULL;
    }
    for (int64_t t = jb->t0; t < jb->t1; t++) {
        int len = context_of(jb, t);
        if (len <= 0) {
            memset(jb->out + t * jb->nq * jb->d, 0, sizeof(float) * jb->nq * jb->d);
        } else if (jb->bf16) { /* constant arguments: the compiler specialises each case */
            if (jb->d == 64) attend(jb, t, len, 8, 1, s);
            else if (jb->d == 128) attend(jb, t, len, 16, 1, s);
            else attend(jb, t, len, jb->d / 8, 1, s);
        } else {
            if (jb->d == 64) attend(jb, t, len, 8, 0, s);
            else if (jb->d == 128) attend(jb, t, len, 16, 0, s);
            else attend(jb, t, len, jb->d / 8, 0, s);
        }
    }
    free(s);
    return NULL;
}

/* Returns 0, or -1 when a scratch buffer could not be had (out is then incomplete). */
int mgpud_paged_attention(const float *q, int64_t q_stride, float *out, const void *k, const void *v, int bf16,
                          const int32_t *tables, int64_t stride, const int32_t *lens, int64_t nseq,
                          int64_t per_seq, int nq, int nkv, int d, int bs, float scale, int threads) {
    Job base = {q, q_stride, out, k, v, bf16, tables, stride, lens, per_seq, nq, nkv, d, bs, scale, 0, 0, 0};
    int64_t tokens = nseq * per_seq, work = 0;
    for (int64_t t = 0; t < tokens; t++) work += context_of(&base, t);
    /* A thread per ~8k (position, query head) pairs, about 0.2 ms of work: starting one
       costs tens of microseconds. */
    int64_t per_thread = 8192;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > 1 && work * nq < per_thread * threads) threads = (int)(work * nq / per_thread) + 1;
    if (threads > tokens) threads = (int)tokens;
    if (threads < 1) threads = 1;
    Job jobs[MAX_THREADS];
    int64_t t = 0, done = 0;
    for (int i = 0; i < threads; i++) { /* equal shares of context, not of tokens */
        jobs[i] = base;
        jobs[i].t0 = t;
        while (t < tokens && (i == threads - 1 || done * threads < work * (i + 1))) done += context_of(&base, t++);
        jobs[i].t1 = t;
    }
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int i = 1; i < threads; i++) started[i] = pthread_create(&ids[i], NULL, run, &jobs[i]) == 0;
    for (int i = 1; i < threads; i++)
        if (!started[i]) run(&jobs[i]);
    run(&jobs[0]);
    int failed = jobs[0].failed;
    for (int i = 1; i < threads; i++) {
        if (started[i]) pthread_join(ids[i], NULL);
        failed |= jobs[i].failed;
    }
    return failed ? -1 : 0;
}
