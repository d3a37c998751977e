// minembed's custom CUDA kernels: all of them, in one file.
//
// Loaded by minembed/cuda.py with cupy.RawModule(code=...) (NVRTC), and
// compiled with `nvcc -ptx` by tests/test_cuda.py so that a syntax or type
// error fails CI on machines without a GPU. Rules for this file:
//   - every kernel is `extern "C"` (its PTX .entry name = its C name);
//   - float32 data, int32 token ids, int64 offsets / row indices;
//   - no #include: NVRTC compiles this with no host headers;
//   - each kernel's NumPy twin (the reference in the tests) is named in its
//     comment; the maths is written next to the code.
// Matmuls are not here: they go to cuBLAS through cupy.matmul.

#define WARP 32
#define FULL_MASK 0xffffffffu
// tokens per "piece" in the segmented sums (segment_sum_*); cuda.py's
// SEG_PIECE must equal it (tests/test_cuda.py checks).
#define SEG_PIECE 32

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;  // every lane holds the sum
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }


// ===========================================================================
// Bag of token embeddings: ragged mean pooling.   Twin: bag.embedding_bag_forward
//
//   out[i, :] = (1 / len_i) * sum_{t in [off_i, off_{i+1})} table[ids[t], :]
//   len_i = off_{i+1} - off_i; an empty view gives a zero row.
//
// One block per view, threads over the D columns: each token row is read
// once, coalesced (D consecutive floats), and the token loop is unrolled by 4
// so four independent row loads are in flight per thread. The block also
// writes view_of[t] = i for its tokens, which the backward needs (saves a
// searchsorted there). grid = (N,), block = (min(256, D rounded up to 32),).
// ===========================================================================
extern "C" __global__ void embedding_bag_forward(
    const float* __restrict__ table, const int* __restrict__ ids,
    const long long* __restrict__ offsets, int D,
    float* __restrict__ out, int* __restrict__ view_of)
{
    const int i = blockIdx.x;
    const long long start = offsets[i], end = offsets[i + 1];
    const float inv = end > start ? 1.0f / (float)(end - start) : 0.0f;
    for (long long t = start + threadIdx.x; t < end; t += blockDim.x) view_of[t] = i;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        long long t = start;
        for (; t + 4 <= end; t += 4) {
            const float a0 = table[(long long)ids[t] * D + d];
            const float a1 = table[(long long)ids[t + 1] * D + d];
            const float a2 = table[(long long)ids[t + 2] * D + d];
            const float a3 = table[(long long)ids[t + 3] * D + d];
            acc += (a0 + a1) + (a2 + a3);
        }
        for (; t < end; ++t) acc += table[(long long)ids[t] * D + d];
        out[(long long)i * D + d] = acc * inv;
    }
}


// ===========================================================================
// Segmented sum: the scatter-add of an embedding gradient, without atomics.
//   Twins: bag.embedding_bag_backward (weighted), layers.segment_sum (plain)
//
//   values[u, :] = sum_{t : key[t] = rows[u]} w(r(t)) * src[r(t), :]
//
// For the bag backward r(t) = view_of[t] (the view holding token t) and
// w(i) = 1 / len_i (d out_i / d table[id] = 1/len_i per occurrence, len_i
// from the offsets); for a plain segment sum r(t) = t and w = 1.
//
// The host sorts the keys once (cupy.argsort: a radix sort); `order` lists
// the tokens in key order. Runs of equal keys in that order are the distinct
// rows u = 0..U-1:
//   segment_flags: flag[t] = 1 where a run starts (t = 0 or a new key);
//   (host) run = cumsum(flag): token t of the sorted list is in run run[t]-1,
//     U = run[M-1] (the one number the host must read back);
//   segment_bounds: the first and last token of each run write its row
//     (the key), seg_start and seg_end.
// A run is split into pieces of at most SEG_PIECE tokens (piece_off[u] ..
// piece_off[u+1] are u's pieces), so a very frequent token (Zipf: "the", ",")
// is summed by many blocks in parallel instead of one block walking
// thousands of rows.
//   pass 1 (segment_sum_partial): one block per piece sums its <= 32 rows;
//     a run of a single piece writes values[u] directly, else partial[p].
//     The grid may be larger than the number of pieces (an upper bound the
//     host knows without reading piece_off back): extra blocks return.
//   pass 2 (segment_sum_combine): one block per run of several pieces adds
//     its pieces' partials in order.
// Every sum is in a fixed order: the result is deterministic (no atomics).
// ===========================================================================
extern "C" __global__ void segment_flags(
    const int* __restrict__ keys, const long long* __restrict__ order, long long M,
    int* __restrict__ flag)
{
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < M;
         t += (long long)gridDim.x * blockDim.x)
        flag[t] = t == 0 || keys[order[t]] != keys[order[t - 1]];
}

extern "C" __global__ void segment_bounds(
    const int* __restrict__ keys, const long long* __restrict__ order,
    const long long* __restrict__ run, long long M,
    int* __restrict__ rows, long long* __restrict__ seg_start, long long* __restrict__ seg_end)
{
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < M;
         t += (long long)gridDim.x * blockDim.x) {
        const long long u = run[t] - 1;
        if (t == 0 || run[t - 1] != run[t]) { rows[u] = keys[order[t]]; seg_start[u] = t; }
        if (t == M - 1 || run[t + 1] != run[t]) seg_end[u] = t + 1;
    }
}

extern "C" __global__ void segment_sum_partial(
    const long long* __restrict__ order,      // (M,) argsort of the keys
    const int* __restrict__ src_row, int has_src_row,   // (M,) r(t), or r(t) = t
    const long long* __restrict__ w_off, int has_w,     // (R+1,) offsets: w(r) = 1/len_r, or 1
    const long long* __restrict__ seg_start, const long long* __restrict__ seg_end,
    const long long* __restrict__ piece_off, int U,     // (U,), (U,), (U+1,)
    const float* __restrict__ src, int D,               // (R, D)
    float* __restrict__ values, float* __restrict__ partial)  // (U, D), (P, D)
{
    __shared__ int s_u;
    __shared__ long long s_r[SEG_PIECE];
    __shared__ float s_w[SEG_PIECE];
    const long long p = blockIdx.x;
    if (p >= piece_off[U]) return;  // beyond the last piece (the grid is an upper bound)
    if (threadIdx.x == 0) {  // the run u holding piece p: piece_off[u] <= p < piece_off[u+1]
        int lo = 0, hi = U;
        while (hi - lo > 1) {
            const int mid = (lo + hi) >> 1;
            if (piece_off[mid] <= p) lo = mid; else hi = mid;
        }
        s_u = lo;
    }
    __syncthreads();
    const int u = s_u;
    const long long first = seg_start[u] + (p - piece_off[u]) * SEG_PIECE;
    const long long last_ = first + SEG_PIECE;
    const long long last = last_ < seg_end[u] ? last_ : seg_end[u];
    const int n = (int)(last - first);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {  // stage the piece's rows once
        const long long t = order[first + j];
        const long long r = has_src_row ? (long long)src_row[t] : t;
        s_r[j] = r;
        const long long len = has_w ? w_off[r + 1] - w_off[r] : 1;
        s_w[j] = len > 0 ? 1.0f / (float)len : 0.0f;
    }
    __syncthreads();
    const bool single = piece_off[u + 1] - piece_off[u] == 1;
    float* dst = single ? values + (long long)u * D : partial + p * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
#pragma unroll 4
        for (int j = 0; j < n; ++j) acc += s_w[j] * src[s_r[j] * D + d];
        dst[d] = acc;
    }
}

extern "C" __global__ void segment_sum_combine(
    const long long* __restrict__ piece_off, const float* __restrict__ partial, int D,
    float* __restrict__ values)
{
    const int u = blockIdx.x;
    const long long a = piece_off[u], b = piece_off[u + 1];
    if (b - a <= 1) return;  // written by pass 1 already
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (long long q = a; q < b; ++q) acc += partial[q * D + d];
        values[(long long)u * D + d] = acc;
    }
}


// ===========================================================================
// Adam / AdamW, one fused pass (read p, g, m, v once; write p, m, v once).
//   Twins: optim.adam_update (dense), optim.adam_update_rows (lazy rows)
//
//   p <- p * decay                      decay = 1 - lr * wd  (decoupled decay)
//   m <- b1 m + (1 - b1) g
//   v <- b2 v + (1 - b2) g^2
//   p <- p - lr_t * m / (sqrt(v) + eps_t)
// with the bias corrections folded into two host scalars (as optim._apply):
//   lr_t = lr sqrt(1 - b2^t) / (1 - b1^t),  eps_t = eps sqrt(1 - b2^t).
// ===========================================================================
__device__ __forceinline__ void adam_one(float* p, float* m, float* v, long long i, float g,
                                         float b1, float b2, float decay, float lr_t, float eps_t)
{
    const float mi = b1 * m[i] + (1.0f - b1) * g;
    const float vi = b2 * v[i] + (1.0f - b2) * (g * g);
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - (mi / (sqrtf(vi) + eps_t)) * lr_t;
}

extern "C" __global__ void adam_update(
    float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
    float* __restrict__ v, long long n,
    float b1, float b2, float decay, float lr_t, float eps_t)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        adam_one(p, m, v, i, g[i], b1, b2, decay, lr_t, eps_t);
}

// Lazy rows: the same update on rows[0..U) of the (V, D) tables only;
// g_rows (U, D) is that rows' gradient. rows must be distinct.
extern "C" __global__ void adam_update_rows(
    float* __restrict__ p, const long long* __restrict__ rows,
    const float* __restrict__ g_rows, float* __restrict__ m, float* __restrict__ v,
    long long U, int D,
    float b1, float b2, float decay, float lr_t, float eps_t)
{
    const long long n = U * D;
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n;
         k += (long long)gridDim.x * blockDim.x) {
        const long long r = k / D, c = k - r * D;
        adam_one(p, m, v, rows[r] * D + c, g_rows[k], b1, b2, decay, lr_t, eps_t);
    }
}


// ===========================================================================
// LayerNorm over the last dim C.   Twins: layers.layernorm_forward/_backward
//
//   mean = sum_c x_c / C,  var = sum_c (x_c - mean)^2 / C,  rstd = 1/sqrt(var + eps)
//   xhat = (x - mean) rstd,  y = xhat g + b
//
// One warp per row (rows = prod of the leading dims); the row is read from
// global memory three times, the second and third from L1/L2. The forward
// stores only mean and rstd (2 floats a row) instead of the (rows, C) xhat:
// the backward recomputes xhat from x, which the caller keeps alive anyway.
// ===========================================================================
extern "C" __global__ void layernorm_forward(
    const float* __restrict__ x, const float* __restrict__ g, const float* __restrict__ b,
    float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
    long long rows, int C, float eps)
{
    const int lane = threadIdx.x & (WARP - 1);
    const long long row = (long long)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;  // whole warps leave together: no block barrier below
    const float* xr = x + row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += WARP) s += xr[c];
    const float mu = warp_sum(s) / (float)C;
    float q = 0.0f;
    for (int c = lane; c < C; c += WARP) { const float d = xr[c] - mu; q += d * d; }
    const float rs = 1.0f / sqrtf(warp_sum(q) / (float)C + eps);
    float* yr = y + row * C;
    for (int c = lane; c < C; c += WARP) yr[c] = (xr[c] - mu) * rs * g[c] + b[c];
    if (lane == 0) { mean_out[row] = mu; rstd_out[row] = rs; }
}

// Backward. With dxhat = dy g and means over the last dim:
//   dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
//   dg = sum_rows dy xhat,   db = sum_rows dy
// One warp per row, grid-stride over rows. Each warp accumulates its dg, db
// in its own slice of shared memory (lane c owns column c: no atomics); at
// the end the block adds its warps' slices in order and writes one partial
// row: partial (gridDim.x, 2, C), summed over blocks on the host.
// x_is_xhat = 1: x already holds xhat (the NumPy twin's cache); mean unused.
// Dynamic shared memory: (blockDim.x / 32) * 2 * C floats.
extern "C" __global__ void layernorm_backward(
    const float* __restrict__ dy, const float* __restrict__ x,
    const float* __restrict__ mean, const float* __restrict__ rstd,
    const float* __restrict__ g, int x_is_xhat,
    float* __restrict__ dx, float* __restrict__ partial, long long rows, int C)
{
    extern __shared__ float sh[];
    const int wpb = blockDim.x / WARP, warp = threadIdx.x / WARP, lane = threadIdx.x & (WARP - 1);
    float* sdg = sh + (long long)warp * 2 * C;
    float* sdb = sdg + C;
    for (int c = lane; c < C; c += WARP) { sdg[c] = 0.0f; sdb[c] = 0.0f; }
    const float invC = 1.0f / (float)C;
    for (long long row = (long long)blockIdx.x * wpb + warp; row < rows;
         row += (long long)gridDim.x * wpb) {
        const float* xr = x + row * C;
        const float* dyr = dy + row * C;
        const float rs = rstd[row];
        const float mu = x_is_xhat ? 0.0f : mean[row];
        const float xs = x_is_xhat ? 1.0f : rs;
        float a = 0.0f, bb = 0.0f;
        for (int c = lane; c < C; c += WARP) {
            const float xh = (xr[c] - mu) * xs;
            const float d = dyr[c];
            const float dxh = d * g[c];
            a += dxh;
            bb += dxh * xh;
            sdg[c] += d * xh;
            sdb[c] += d;
        }
        a = warp_sum(a) * invC;    // mean(dxhat)
        bb = warp_sum(bb) * invC;  // mean(dxhat xhat)
        float* dxr = dx + row * C;
        for (int c = lane; c < C; c += WARP) {
            const float xh = (xr[c] - mu) * xs;
            dxr[c] = rs * (dyr[c] * g[c] - a - xh * bb);
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float s1 = 0.0f, s2 = 0.0f;
        for (int w = 0; w < wpb; ++w) { s1 += sh[w * 2 * C + c]; s2 += sh[w * 2 * C + C + c]; }
        partial[(long long)blockIdx.x * 2 * C + c] = s1;
        partial[(long long)blockIdx.x * 2 * C + C + c] = s2;
    }
}


// ===========================================================================
// GELU, tanh approximation (GPT-2).   Twins: layers.gelu_forward/_backward
//   u = k (x + a x^3),  k = sqrt(2/pi), a = 0.044715,  t = tanh(u)
//   y = 0.5 x (1 + t)
//   dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 a x^2)
// The backward recomputes t from x (one tanh) instead of reading a stored t:
// the forward then writes only y, and its cache holds x alone.
// ===========================================================================
#define GELU_K 0.7978845608028654f
#define GELU_A 0.044715f

extern "C" __global__ void gelu_forward(const float* __restrict__ x, float* __restrict__ y,
                                        long long n)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float xi = x[i];
        const float t = tanhf(GELU_K * (xi + GELU_A * xi * xi * xi));
        y[i] = 0.5f * xi * (1.0f + t);
    }
}

extern "C" __global__ void gelu_backward(const float* __restrict__ dy, const float* __restrict__ x,
                                         float* __restrict__ dx, long long n)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float xi = x[i];
        const float x2 = xi * xi;
        const float t = tanhf(GELU_K * (xi + GELU_A * x2 * xi));
        const float du = GELU_K * (1.0f + 3.0f * GELU_A * x2);
        dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * xi * (1.0f - t * t) * du);
    }
}


// ===========================================================================
// Softmax over the last dim T with a key mask.   Twins: layers.softmax_forward/_backward
//   p_j = [mask_j] exp(z_j - max_k z_k) / sum_k [mask_k] exp(z_k - max)
// (max over unmasked keys). Masked keys get exactly 0; a row whose keys are
// all masked gets all zeros (the sum is 0: multiply by 0 instead of 1/0).
// Scores (rows, T), rows = prod of the leading dims. Row r uses mask row
// r / rows_per_mask of the (R, T) uint8/bool mask: for attention scores
// (N, H, T, T) and a key mask (N, T), rows_per_mask = H * T, so the mask is
// never broadcast in memory. has_mask = 0: a plain softmax.
// One warp per row; three passes over the row (max, sum, write), the later
// two from cache; exp is recomputed rather than stored.
// ===========================================================================
extern "C" __global__ void softmax_forward(
    const float* __restrict__ z, const unsigned char* __restrict__ mask, int has_mask,
    long long rows_per_mask, float* __restrict__ p, long long rows, int T)
{
    const int lane = threadIdx.x & (WARP - 1);
    const long long row = (long long)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;
    const float* zr = z + row * T;
    const unsigned char* mr = has_mask ? mask + (row / rows_per_mask) * T : mask;
    float mx = neg_inf();
    for (int k = lane; k < T; k += WARP)
        if (!has_mask || mr[k]) mx = fmaxf(mx, zr[k]);
    mx = warp_max(mx);
    float s = 0.0f;
    for (int k = lane; k < T; k += WARP)
        if (!has_mask || mr[k]) s += expf(zr[k] - mx);
    s = warp_sum(s);
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;
    float* pr = p + row * T;
    for (int k = lane; k < T; k += WARP)
        pr[k] = (!has_mask || mr[k]) ? expf(zr[k] - mx) * inv : 0.0f;
}

// Backward:  dz_j = p_j (dp_j - sum_k dp_k p_k); masked keys have p_j = 0,
// so they get exactly 0. One warp per row.
extern "C" __global__ void softmax_backward(
    const float* __restrict__ dp, const float* __restrict__ p, float* __restrict__ dz,
    long long rows, int T)
{
    const int lane = threadIdx.x & (WARP - 1);
    const long long row = (long long)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;
    const float* dpr = dp + row * T;
    const float* pr = p + row * T;
    float s = 0.0f;
    for (int k = lane; k < T; k += WARP) s += dpr[k] * pr[k];
    s = warp_sum(s);
    float* dzr = dz + row * T;
    for (int k = lane; k < T; k += WARP) dzr[k] = pr[k] * (dpr[k] - s);
}


// ===========================================================================
// InfoNCE over the rows of a similarity matrix, target = the diagonal.
//   Twin: loss.infonce_rows
//
//   m_i = max_j s_ij,  z_i = sum_j exp(s_ij - m_i),  P_ij = exp(s_ij - m_i) / z_i
//   loss_i = m_i + log z_i - s_ii                 (cross-entropy, target i)
//   g_ij   = P_ij - [i == j]                      (d loss_i / d s_ij)
//   hit_i  = [argmax_j s_ij == i]                 (the first maximum, as numpy)
// s (R, C) row-major, R <= C. One block per row; three passes over the row
// (max, sum, write), the later two from cache: the loss, its gradient and
// the in-batch accuracy in one launch instead of a dozen array operations.
// ===========================================================================
__device__ __forceinline__ void max_first(float& v, int& j, float ov, int oj) {
    // the larger value; on a tie the smaller index (numpy.argmax: the first)
    if (ov > v || (ov == v && oj < j)) { v = ov; j = oj; }
}

extern "C" __global__ void infonce_rows(
    const float* __restrict__ s, int C, float* __restrict__ g,
    float* __restrict__ loss, unsigned char* __restrict__ hit)
{
    __shared__ float sh_v[32];
    __shared__ int sh_j[32];
    __shared__ float sh_m;
    __shared__ int sh_am;
    const long long i = blockIdx.x;
    const float* row = s + i * C;
    const int lane = threadIdx.x & (WARP - 1), warp = threadIdx.x / WARP;
    const int warps = (blockDim.x + WARP - 1) / WARP;
    // pass 1: the row's max and where it first occurs
    float mx = neg_inf();
    int am = C;
    for (int j = threadIdx.x; j < C; j += blockDim.x) max_first(mx, am, row[j], j);
    for (int o = WARP / 2; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(FULL_MASK, mx, o);
        const int oj = __shfl_xor_sync(FULL_MASK, am, o);
        max_first(mx, am, ov, oj);
    }
    if (lane == 0) { sh_v[warp] = mx; sh_j[warp] = am; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < warps; ++w) max_first(mx, am, sh_v[w], sh_j[w]);
        sh_m = mx;
        sh_am = am;
    }
    __syncthreads();
    mx = sh_m;
    // pass 2: z = sum exp(s - max)
    float z = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) z += expf(row[j] - mx);
    z = warp_sum(z);
    __syncthreads();  // sh_v is reused
    if (lane == 0) sh_v[warp] = z;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < warps; ++w) z += sh_v[w];
        sh_v[0] = z;
        loss[i] = mx + logf(z) - row[i];
        hit[i] = sh_am == i;
    }
    __syncthreads();
    const float inv = 1.0f / sh_v[0];
    // pass 3: g = P - I
    float* grow = g + i * C;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        grow[j] = expf(row[j] - mx) * inv - (j == i ? 1.0f : 0.0f);
}
