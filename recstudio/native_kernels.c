/* Native CPU kernels for the hot training step and full-ranking AUC (see recstudio/native.py).
 *
 * The sampled inner-product loss (BPR / BCE with BPR-Opt's L2 penalty) as one pass over the
 * batch: on the project's 2-core CPU, torch spends most of this step in per-op dispatch and
 * thread hand-offs for ~15 small tensors, not in arithmetic. Formulas are those of
 * recstudio.model.ops._SampledInnerProductLoss, whose torch code stays the reference.
 *
 * Plain C99 (OpenMP where the compiler has it), no torch headers, so it compiles in about a
 * second on first use. Each
 * function exists for float and double (REAL / SUFFIX below); ids are int64.
 *
 *   query:    [nq, d] rows; with query_index (length n) the rows used are query[query_index[i]],
 *             otherwise query has n rows used in order
 *   items:    [ni, d] table; candidates [n, c]: column 0 the positive, 1..c-1 the negatives
 *   kind:     0 = BPR (mean softplus(s_neg - s_pos) over n * k pairs),
 *             1 = BCE (mean over rows of softplus(-s_pos) + mean_k softplus(s_neg))
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#define SPLIT_THREADS(owner, owners) (owner = omp_get_thread_num(), owners = omp_get_num_threads())
#else
#define SPLIT_THREADS(owner, owners) ((void)0)
#endif

/* softplus(x) = log(1 + e^x) and the logistic sigmoid, stable for any x, in the kernel's own
   precision (float's expf/log1pf are about twice as fast as the double functions). */
static float softplus_f32(float x) { return (x > 0 ? x : 0.0f) + log1pf(expf(-fabsf(x))); }
static double softplus_f64(double x) { return (x > 0 ? x : 0.0) + log1p(exp(-fabs(x))); }
static float sigmoid_f32(float x) {
    if (x >= 0) return 1.0f / (1.0f + expf(-x));
    const float e = expf(x);
    return e / (1.0f + e);
}
static double sigmoid_f64(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    const double e = exp(x);
    return e / (1.0 + e);
}

/* Thread ownership of gradient rows in contiguous ranges, without a division per row (a 64-bit
   division costs ~40 cycles, as much as the row update itself): owner = id * m >> 32. */
static uint64_t range_multiplier(int64_t owners, int64_t rows) {
    return ((uint64_t)owners << 32) / (uint64_t)(rows > 0 ? rows : 1) + 1;
}
static int64_t owner_of(int64_t id, uint64_t m, int64_t owners) {
    const int64_t o = (int64_t)(((uint64_t)id * m) >> 32);
    return o < owners ? o : owners - 1;
}

/* The first row id whose owner is >= owner (owner_of is non-decreasing in the id). */
static int64_t first_owned_row(int64_t owner, int64_t rows, uint64_t m, int64_t owners) {
    int64_t lo = 0, hi = rows;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (owner_of(mid, m, owners) < owner) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

#define DEFINE_KERNELS(REAL, SUFFIX)                                                             \
    static REAL dot_##SUFFIX(const REAL *a, const REAL *b, int64_t d) {                         \
        REAL acc = 0;                                                                            \
        _Pragma("omp simd reduction(+ : acc)") for (int64_t t = 0; t < d; ++t) acc += a[t] * b[t]; \
        return acc;                                                                              \
    }                                                                                            \
    /* q . v and v . v in one pass over v */                                                     \
    static REAL dot_and_square_##SUFFIX(const REAL *q, const REAL *v, int64_t d, REAL *vv) {    \
        REAL acc = 0, sq = 0;                                                                    \
        _Pragma("omp simd reduction(+ : acc, sq)") for (int64_t t = 0; t < d; ++t) {            \
            acc += q[t] * v[t];                                                                  \
            sq += v[t] * v[t];                                                                   \
        }                                                                                        \
        *vv = sq;                                                                                \
        return acc;                                                                              \
    }                                                                                            \
                                                                                                 \
    static void zero_owned_rows_##SUFFIX(REAL *table, int64_t rows, int64_t d, uint64_t m,      \
                                         int64_t owner, int64_t owners) {                        \
        const int64_t lo = first_owned_row(owner, rows, m, owners);                              \
        const int64_t hi = first_owned_row(owner + 1, rows, m, owners);                          \
        if (hi > lo) memset(table + lo * d, 0, (size_t)(hi - lo) * (size_t)d * sizeof(REAL));    \
    }                                                                                            \
                                                                                                 \
    /* Returns 0; or 1 + the flat position of the first candidate id out of range; or            \
       -(1 + the position of the first query id out of range). Nothing is computed then. */    \
    int64_t sipl_forward_##SUFFIX(const REAL *query, int64_t nq, const int64_t *query_index,     \
                                  const REAL *items, int64_t ni, const int64_t *cand, int64_t n, \
                                  int64_t c, int64_t d, int kind, double reg_weight,             \
                                  REAL *scores, double *loss_out) {                              \
        for (int64_t p = 0; p < n * c; ++p)                                                      \
            if (cand[p] < 0 || cand[p] >= ni) return p + 1;                                      \
        if (query_index)                                                                         \
            for (int64_t i = 0; i < n; ++i)                                                      \
                if (query_index[i] < 0 || query_index[i] >= nq) return -(i + 1);                 \
        const int64_t k = c - 1;                                                                 \
        double loss = 0.0, reg = 0.0;                                                            \
        _Pragma("omp parallel for schedule(static) reduction(+ : loss, reg) if (n * c * d > 32768)") \
        for (int64_t i = 0; i < n; ++i) {                                                        \
            const REAL *q = query + (query_index ? query_index[i] : i) * d;                       \
            REAL *s = scores + i * c;                                                            \
            for (int64_t j = 0; j < c; ++j) {                                                    \
                const REAL *v = items + cand[i * c + j] * d;                                     \
                if (reg_weight != 0.0) {                                                         \
                    REAL vv;                                                                     \
                    s[j] = dot_and_square_##SUFFIX(q, v, d, &vv);                                \
                    reg += vv;                                                                   \
                } else {                                                                         \
                    s[j] = dot_##SUFFIX(q, v, d);                                                \
                }                                                                                \
            }                                                                                    \
            if (reg_weight != 0.0) reg += dot_##SUFFIX(q, q, d);                                 \
            double row = 0.0;                                                                    \
            if (kind == 0) {                                                                     \
                for (int64_t j = 1; j < c; ++j) row += softplus_##SUFFIX(s[j] - s[0]);           \
                loss += row / (double)k;                                                         \
            } else {                                                                             \
                for (int64_t j = 1; j < c; ++j) row += softplus_##SUFFIX(s[j]);                  \
                loss += softplus_##SUFFIX(-s[0]) + row / (double)k;                               \
            }                                                                                    \
        }                                                                                        \
        *loss_out = loss / (double)n + reg_weight / (double)n * reg;                             \
        return 0;                                                                                \
    }                                                                                            \
                                                                                                 \
    /* Adds the gradients into d_query ([n, d], or [nq, d] with query_index; NULL: not wanted)  \
       and d_items ([ni, d]; NULL: not wanted), which it zeroes first. ds is [n, c] scratch: \
       the loss's gradient per score. With several threads, each one writes only the gradient   \
       rows it owns (a contiguous range of row ids), so no two threads add into one row and the    \
       order of the additions into each row is that of the batch, whatever the thread count.   \
       */                                                                                        \
    void sipl_backward_##SUFFIX(const REAL *query, int64_t nq, const int64_t *query_index,       \
                                const REAL *items, int64_t ni, const int64_t *cand, const REAL *scores, int64_t n, int64_t c,   \
                                int64_t d, int kind, double grad, double reg_weight, REAL *ds,   \
                                REAL *d_query, REAL *d_items) {                                  \
        const int64_t k = c - 1;                                                                 \
        const REAL scale = (REAL)(2.0 * reg_weight * grad / (double)n);                         \
        const int use_threads = n * c * d > 32768;                                                  \
        _Pragma("omp parallel for schedule(static) if (use_threads)")                              \
        for (int64_t i = 0; i < n; ++i) {                                                        \
            const REAL *s = scores + i * c;                                                      \
            REAL *g = ds + i * c;                                                                \
            if (kind == 0) {                                                                     \
                const double w = grad / (double)(n * k);                                         \
                double pos = 0.0;                                                                \
                for (int64_t j = 1; j < c; ++j) {                                                \
                    const double gj = w * sigmoid_##SUFFIX(s[j] - s[0]);                          \
                    g[j] = (REAL)gj; /* d softplus(s_j - s_0) / d s_j */                        \
                    pos -= gj;                                                                   \
                }                                                                                \
                g[0] = (REAL)pos;                                                                \
            } else {                                                                             \
                g[0] = (REAL)((sigmoid_##SUFFIX(s[0]) - 1.0) * grad / (double)n);                 \
                for (int64_t j = 1; j < c; ++j)                                                  \
                    g[j] = (REAL)(sigmoid_##SUFFIX(s[j]) * grad / (double)(n * k));              \
            }                                                                                    \
        }                                                                                        \
        _Pragma("omp parallel if (use_threads)")                                                    \
        {                                                                                        \
            int64_t owner = 0, owners = 1;                                                       \
            SPLIT_THREADS(owner, owners);                                                        \
            const int64_t q_rows = query_index ? nq : n;                                         \
            const uint64_t q_range = range_multiplier(owners, q_rows);                           \
            const uint64_t i_range = range_multiplier(owners, ni);                               \
            /* each thread zeroes the rows it owns: no separate pass over the tables */          \
            if (d_query) zero_owned_rows_##SUFFIX(d_query, q_rows, d, q_range, owner, owners);   \
            if (d_items) zero_owned_rows_##SUFFIX(d_items, ni, d, i_range, owner, owners);       \
            for (int64_t i = 0; i < n; ++i) {                                                    \
                const int64_t qi = query_index ? query_index[i] : i;                             \
                const REAL *q = query + qi * d;                                                  \
                const REAL *g = ds + i * c;                                                      \
                REAL *dq = (d_query && owner_of(qi, q_range, owners) == owner) ? d_query + qi * d : NULL; \
                for (int64_t j = 0; j < c; ++j) {                                                \
                    const int64_t id = cand[i * c + j];                                          \
                    const REAL *v = items + id * d;                                              \
                    const REAL gj = g[j];                                                        \
                    if (dq) {                                                                    \
                        _Pragma("omp simd") for (int64_t t = 0; t < d; ++t) dq[t] += gj * v[t];  \
                    }                                                                            \
                    if (d_items && owner_of(id, i_range, owners) == owner) {                     \
                        REAL *dv = d_items + id * d;                                             \
                        _Pragma("omp simd") for (int64_t t = 0; t < d; ++t)                      \
                            dv[t] += gj * q[t] + scale * v[t];                                   \
                    }                                                                            \
                }                                                                                \
                if (dq && scale != 0) {                                                          \
                    _Pragma("omp simd") for (int64_t t = 0; t < d; ++t) dq[t] += scale * q[t];   \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }

/* For each query t (row rows[t], value values[t]) of the score matrix x [b, num]: how many entries
   of that row are < value (below[t]) and <= value (below_or_equal[t]). The exact counts a sort
   and two binary searches give (full-ranking AUC), from one vectorised pass over the row per
   query instead of sorting every row; queries of one row reuse it from cache. */
#define DEFINE_COUNTS(REAL, SUFFIX)                                                              \
    void count_below_##SUFFIX(const REAL *x, int64_t num, const int64_t *rows,                  \
                              const REAL *values, int64_t t, int64_t *below,                    \
                              int64_t *below_or_equal) {                                         \
        _Pragma("omp parallel for schedule(static) if (t * num > 262144)")                      \
        for (int64_t q = 0; q < t; ++q) {                                                        \
            const REAL *row = x + rows[q] * num;                                                 \
            const REAL v = values[q];                                                            \
            int32_t lt = 0, le = 0; /* 32-bit: 8 lanes per AVX2 op; the caller checks num */    \
            _Pragma("omp simd reduction(+ : lt, le)") for (int64_t j = 0; j < num; ++j) {       \
                lt += row[j] < v;                                                                \
                le += row[j] <= v;                                                               \
            }                                                                                    \
            below[q] = lt;                                                                       \
            below_or_equal[q] = le;                                                              \
        }                                                                                        \
    }

/* The number of -inf entries (excluded items) in each row of x [b, num]. */
#define DEFINE_EXCLUDED(REAL, SUFFIX)                                                            \
    void count_neg_inf_##SUFFIX(const REAL *x, int64_t b, int64_t num, int64_t *out) {           \
        _Pragma("omp parallel for schedule(static) if (b * num > 262144)")                      \
        for (int64_t r = 0; r < b; ++r) {                                                        \
            const REAL *row = x + r * num;                                                       \
            int32_t n = 0;                                                                       \
            _Pragma("omp simd reduction(+ : n)") for (int64_t j = 0; j < num; ++j) n += row[j] == -INFINITY; \
            out[r] = n;                                                                          \
        }                                                                                        \
    }

DEFINE_EXCLUDED(float, f32)
DEFINE_EXCLUDED(double, f64)
DEFINE_COUNTS(float, f32)
DEFINE_COUNTS(double, f64)
DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)

/* Bumped whenever a signature or formula changes: part of the compiled library's cache key. */
int recstudio_native_abi(void) { return 5; }
