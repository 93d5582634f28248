// Local attention (eq. 3) on the CPU, forward and backward, without k^2-expanded tensors.
//
// Layout: q, k, v, out, grads (B, N, D, H, W) contiguous, float32 (or float64, for the tests);
// rel_rows, rel_cols (N, K, D/2).
//
// One task per (image, head). A task first copies its keys and values into zero-padded planes
// (D, H + K - 1, W + K - 1), so that every window offset reads a full row without bounds checks:
// in "zeros" mode a neighbour outside the image then has key and value 0, as the reference pads;
// "mask" mode sets those logits to -inf. Then it goes one query row at a time. The row's K*K
// logits (and in backward their gradients) live in a small buffer, and the loops run along the
// row's pixels in registers of Lanes values (GCC vector extensions), summing over the head's
// channels or the window's offsets before writing anything.
//
// Forward returns, beside the output, the log-sum-exp of each pixel's logits (B, N, H, W), and
// backward needs only that and the inputs: it recomputes the probabilities, as flash attention
// does. It gathers the gradients of k and v one key row at a time, from the probabilities (and
// their gradients) of the K query rows whose windows hold that row, kept in a ring of rows: each
// gradient is summed in registers and stored once, where scattering each query's share into
// padded planes loaded and stored every value K*K times. Tasks never write to the same memory.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// A register of 32 bytes: 8 floats or 4 doubles.
template <typename T>
struct Lanes {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int64_t size = 32 / sizeof(T);
  static type load(const T* p) {
    type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(T* p, type v) { std::memcpy(p, &v, sizeof(v)); }
};

// exp(x) for x <= 0 (a logit minus the log-sum-exp or the maximum), 8 at a time: 2^n * p(r) with
// n = round(x / ln 2), r = x - n ln 2 and a degree-6 Taylor polynomial (relative error < 3e-7);
// 0 below -87 (where float's exp leaves the normal range) and for -inf, a masked logit.
inline Lanes<float>::type exp_nonpositive(Lanes<float>::type x) {
  typedef int32_t Ints __attribute__((vector_size(32)));
  using V = Lanes<float>::type;
  const V below = x < -87.0f ? V{} + 1.0f : V{};
  x = below != 0.0f ? V{} - 87.0f : x;
  // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in float arithmetic.
  const V n = (x * 1.4426950408889634f + 12582912.0f) - 12582912.0f;
  const V r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  V p = V{} + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const Ints bits = (__builtin_convertvector(n, Ints) + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return below != 0.0f ? V{} : p * scale;
}

inline float exp_nonpositive(float x) {
  Lanes<float>::type lanes = {x};
  return exp_nonpositive(lanes)[0];
}

inline double exp_nonpositive(double x) { return std::exp(x); }

struct Shape {
  int64_t batch, heads, dim, height, width, kernel;
  bool has_keys, has_rel, mask;
  int64_t plane() const { return height * width; }
  int64_t half() const { return dim / 2; }
  int64_t pad() const { return kernel / 2; }
  int64_t padded_width() const { return width + kernel - 1; }
  int64_t padded_plane() const { return (height + kernel - 1) * padded_width(); }
};

// sum over i < count of a[i](w) * b[i](w), for the pixels w of a row, into out[w] (+= if
// accumulate): a and b advance by a_step and b_step per term. The sum stays in registers.
template <typename T>
void sum_of_products(T* out, const T* a, int64_t a_step, const T* b, int64_t b_step, int64_t count, int64_t width,
                     bool accumulate) {
  using L = Lanes<T>;
  int64_t w = 0;
  for (; w + L::size <= width; w += L::size) {
    typename L::type acc = accumulate ? L::load(out + w) : typename L::type{};
    for (int64_t i = 0; i < count; ++i) acc += L::load(a + i * a_step + w) * L::load(b + i * b_step + w);
    L::store(out + w, acc);
  }
  for (; w < width; ++w) {
    T acc = accumulate ? out[w] : T(0);
    for (int64_t i = 0; i < count; ++i) acc += a[i * a_step + w] * b[i * b_step + w];
    out[w] = acc;
  }
}

// Channels per register block: the window loops below keep a block of channels' rows (or sums)
// in registers across all K*K offsets, so that each multiply-add loads one value, not two.
constexpr int64_t kBlock = 8;

// f(std::integral_constant<int64_t, n>) for n = count (1..kBlock): loops over a block's channels
// with a compile-time count unroll, and their registers stay registers.
template <typename F>
void with_block(int64_t count, F&& f) {
  switch (count) {
    case 1: f(std::integral_constant<int64_t, 1>{}); break;
    case 2: f(std::integral_constant<int64_t, 2>{}); break;
    case 3: f(std::integral_constant<int64_t, 3>{}); break;
    case 4: f(std::integral_constant<int64_t, 4>{}); break;
    case 5: f(std::integral_constant<int64_t, 5>{}); break;
    case 6: f(std::integral_constant<int64_t, 6>{}); break;
    case 7: f(std::integral_constant<int64_t, 7>{}); break;
    default: f(std::integral_constant<int64_t, 8>{}); break;
  }
}

// Rows of per-offset weights (K*K, W + K - 1) for the last K query rows, each zero-padded by
// pad columns on both sides; a row outside the image is all zeros. Row h lives in slot h mod K.
template <typename T>
struct Ring {
  int64_t kernel, size;  // slots, values per slot
  std::vector<T> values;

  explicit Ring(const Shape& s) : kernel(s.kernel), size(s.kernel * s.kernel * s.padded_width()), values(kernel * size) {}

  int64_t slot(int64_t h) const { return ((h % kernel) + kernel) % kernel; }
  const T* row(int64_t h) const { return values.data() + slot(h) * size; }
  void clear() { std::fill(values.begin(), values.end(), T(0)); }
  void clear(int64_t h) { std::fill_n(values.data() + slot(h) * size, size, T(0)); }

  // weights (K*K, W) of query row h into its slot; the padding columns stay zero.
  void store(int64_t h, const T* weights, int64_t width) {
    const int64_t pad = kernel / 2, padded_width = width + kernel - 1;
    T* target = values.data() + slot(h) * size;
    for (int64_t o = 0; o < kernel * kernel; ++o)
      std::memcpy(target + o * padded_width + pad, weights + o * width, width * sizeof(T));
  }
};

template <typename T>
struct Task {
  const Shape& s;
  std::vector<T> keys, values, logits, scores, rel_row, rel_col, lse, delta;
  std::vector<const T*> ring_rows;  // window_gather's K query rows

  explicit Task(const Shape& shape)
      : s(shape), keys(shape.has_keys ? shape.dim * shape.padded_plane() : 0), values(shape.dim * shape.padded_plane()),
        logits(shape.kernel * shape.kernel * shape.width), scores(shape.kernel * shape.kernel * shape.width),
        rel_row(shape.kernel * shape.width), rel_col(shape.kernel * shape.width), lse(shape.width), delta(shape.width),
        ring_rows(shape.kernel) {}

  // (D, H, W) -> the zero-padded (D, H + K - 1, W + K - 1).
  void pad(const T* source, std::vector<T>& padded) const {
    std::fill(padded.begin(), padded.end(), T(0));
    const int64_t P = s.pad(), Wp = s.padded_width();
    for (int64_t d = 0; d < s.dim; ++d)
      for (int64_t h = 0; h < s.height; ++h)
        std::memcpy(padded.data() + d * s.padded_plane() + (h + P) * Wp + P, source + d * s.plane() + h * s.width,
                    s.width * sizeof(T));
  }

  bool inside(int64_t h, int64_t a, int64_t c, int64_t w) const {
    const int64_t hh = h + a - s.pad(), ww = w + c - s.pad();
    return hh >= 0 && hh < s.height && ww >= 0 && ww < s.width;
  }

  // The window offset (a, c) of query (h, w) in a padded plane.
  int64_t at(int64_t h, int64_t a, int64_t c) const { return (h + a) * s.padded_width() + c; }

  // logits[o * W + w] for query row h: q.k over the window plus q.r; -inf outside in mask mode.
  void row_logits(const T* q, const T* rel_rows, const T* rel_cols, int64_t h) {
    const int64_t W = s.width, K = s.kernel, HW = s.plane(), half = s.half();
    std::fill(rel_row.begin(), rel_row.end(), T(0));
    std::fill(rel_col.begin(), rel_col.end(), T(0));
    if (s.has_rel) {
      for (int64_t a = 0; a < K; ++a) {
        for (int64_t d = 0; d < half; ++d) {
          const T r = rel_rows[a * half + d], c = rel_cols[a * half + d];
          const T* __restrict q_first = q + d * HW + h * W;
          const T* __restrict q_second = q + (d + half) * HW + h * W;
          T* __restrict row = rel_row.data() + a * W;
          T* __restrict col = rel_col.data() + a * W;
          for (int64_t w = 0; w < W; ++w) {
            row[w] += q_first[w] * r;
            col[w] += q_second[w] * c;
          }
        }
      }
    }
    for (int64_t a = 0; a < K; ++a)
      for (int64_t c = 0; c < K; ++c) {
        T* __restrict out = logits.data() + (a * K + c) * W;
        for (int64_t w = 0; w < W; ++w) out[w] = rel_row[a * W + w] + rel_col[c * W + w];
      }
    if (s.has_keys) window_dots(logits.data(), q + h * W, HW, keys, h);
    if (s.mask)
      for (int64_t a = 0; a < K; ++a)
        for (int64_t c = 0; c < K; ++c)
          for (int64_t w = 0; w < W; ++w)
            if (!inside(h, a, c, w)) logits[(a * K + c) * W + w] = kNegInf<T>;
  }

  // In place: logits -> exp(logit - row_lse), the probabilities when row_lse is the log-sum-exp.
  void probabilities(const T* row_lse) {
    const int64_t W = s.width, KK = s.kernel * s.kernel;
    using L = Lanes<T>;
    for (int64_t o = 0; o < KK; ++o) {
      T* __restrict p = logits.data() + o * W;
      int64_t w = 0;
      if constexpr (std::is_same_v<T, float>)
        for (; w + L::size <= W; w += L::size) L::store(p + w, exp_nonpositive(L::load(p + w) - L::load(row_lse + w)));
      for (; w < W; ++w) p[w] = p[w] == kNegInf<T> ? T(0) : exp_nonpositive(p[w] - row_lse[w]);
    }
  }

  // out[o * W + w] += sum over channels d of rows[d * row_step + w] * the plane's neighbour (a, c)
  // of (h, w) in channel d, o = a * K + c: the window's q.k logits (rows = q, plane = keys) or
  // grad_out . v (rows = grad_out, plane = values).
  void window_dots(T* out, const T* rows, int64_t row_step, const std::vector<T>& plane, int64_t h) const {
    for (int64_t d0 = 0; d0 < s.dim; d0 += kBlock)
      with_block(std::min(kBlock, s.dim - d0), [&](auto block) {
        constexpr int64_t n = decltype(block)::value;
        const int64_t W = s.width, K = s.kernel, P = s.padded_plane();
        const T* channels = rows + d0 * row_step;
        const T* planes = plane.data() + d0 * P;
        using L = Lanes<T>;
        int64_t w = 0;
        for (; w + L::size <= W; w += L::size) {
          typename L::type row[n];
          for (int64_t j = 0; j < n; ++j) row[j] = L::load(channels + j * row_step + w);
          for (int64_t a = 0; a < K; ++a)
            for (int64_t c = 0; c < K; ++c) {
              T* target = out + (a * K + c) * W + w;
              const T* neighbours = planes + at(h, a, c) + w;
              typename L::type acc = L::load(target);
              for (int64_t j = 0; j < n; ++j) acc += row[j] * L::load(neighbours + j * P);
              L::store(target, acc);
            }
        }
        for (; w < W; ++w)
          for (int64_t a = 0; a < K; ++a)
            for (int64_t c = 0; c < K; ++c) {
              T acc = out[(a * K + c) * W + w];
              for (int64_t j = 0; j < n; ++j) acc += channels[j * row_step + w] * planes[j * P + at(h, a, c) + w];
              out[(a * K + c) * W + w] = acc;
            }
      });
  }

  // The relative logits' gradients for query row h (ds in scores): row offset a's embedding meets
  // the first half of q, summed over the window's columns; column offset c's the second half,
  // summed over its rows. Adds into the query gradient's row and the task's embedding gradients.
  void relative_grads(T* gq_row, T* grad_rows, T* grad_cols, const T* q, const T* rows, const T* cols, int64_t h) {
    const int64_t W = s.width, K = s.kernel, HW = s.plane(), half = s.half();
    const T* __restrict ds = scores.data();
    T* __restrict by_row = rel_row.data();
    T* __restrict by_col = rel_col.data();
    std::fill(by_row, by_row + K * W, T(0));
    std::fill(by_col, by_col + K * W, T(0));
    for (int64_t a = 0; a < K; ++a)
      for (int64_t c = 0; c < K; ++c) {
        const T* __restrict row = ds + (a * K + c) * W;
        for (int64_t w = 0; w < W; ++w) {
          by_row[a * W + w] += row[w];
          by_col[c * W + w] += row[w];
        }
      }
    for (int64_t a = 0; a < K; ++a)
      for (int64_t d = 0; d < half; ++d) {
        const T* __restrict q_first = q + d * HW + h * W;
        const T* __restrict q_second = q + (d + half) * HW + h * W;
        T* __restrict gq_first = gq_row + d * HW;
        T* __restrict gq_second = gq_row + (d + half) * HW;
        const T r = rows[a * half + d], c = cols[a * half + d];
        const T* __restrict row = by_row + a * W;
        const T* __restrict col = by_col + a * W;
        T sum_rows = 0, sum_cols = 0;
        for (int64_t w = 0; w < W; ++w) {
          gq_first[w] += row[w] * r;
          gq_second[w] += col[w] * c;
          sum_rows += row[w] * q_first[w];
          sum_cols += col[w] * q_second[w];
        }
        grad_rows[a * half + d] += sum_rows;
        grad_cols[a * half + d] += sum_cols;
      }
  }

  // out[d * out_step + w] = sum over the window's offsets (a, c) of weight(a, c)[w] *
  // plane[d * P + neighbour(a, c) + w], for every channel d: weight and neighbour give row
  // pointers and plane offsets for an offset. The forward's weighted sum of values, the
  // backward's query gradient (ds times keys), and its key and value gradients, gathered.
  template <typename Weight, typename Neighbour>
  void weighted_sums(T* out, int64_t out_step, const std::vector<T>& plane, Weight&& weight,
                     Neighbour&& neighbour) const {
    for (int64_t d0 = 0; d0 < s.dim; d0 += kBlock)
      with_block(std::min(kBlock, s.dim - d0), [&](auto block) {
        constexpr int64_t n = decltype(block)::value;
        const int64_t W = s.width, K = s.kernel, P = s.padded_plane();
        T* channels = out + d0 * out_step;
        const T* planes = plane.data() + d0 * P;
        using L = Lanes<T>;
        int64_t w = 0;
        for (; w + L::size <= W; w += L::size) {
          typename L::type acc[n] = {};
          for (int64_t a = 0; a < K; ++a)
            for (int64_t c = 0; c < K; ++c) {
              const typename L::type factor = L::load(weight(a, c) + w);
              const T* neighbours = planes + neighbour(a, c) + w;
              for (int64_t j = 0; j < n; ++j) acc[j] += factor * L::load(neighbours + j * P);
            }
          for (int64_t j = 0; j < n; ++j) L::store(channels + j * out_step + w, acc[j]);
        }
        for (; w < W; ++w) {
          T acc[n] = {};
          for (int64_t a = 0; a < K; ++a)
            for (int64_t c = 0; c < K; ++c) {
              const T factor = weight(a, c)[w];
              const T* neighbours = planes + neighbour(a, c) + w;
              for (int64_t j = 0; j < n; ++j) acc[j] += factor * neighbours[j * P];
            }
          for (int64_t j = 0; j < n; ++j) channels[j * out_step + w] = acc[j];
        }
      });
  }

  // Query row h's weighted sums: weights[o * W + w] for its pixels w and offsets o = a * K + c.
  void window_sums(T* out, int64_t out_step, const T* weights, const std::vector<T>& plane, int64_t h) const {
    const int64_t W = s.width, K = s.kernel;
    weighted_sums(out, out_step, plane, [&](int64_t a, int64_t c) { return weights + (a * K + c) * W; },
                  [&](int64_t a, int64_t c) { return at(h, a, c); });
  }

  // The adjoint of window_sums for key row h, gathered rather than scattered: the key (h, w) is
  // offset (a, c) of the query (h - a + pad, w - c + pad), so its gradient is the sum over offsets
  // of that query's weight times its source (grad_out for values, q for keys). `ring` holds the
  // weights of query rows h - pad .. h + pad (Ring), `plane` the source zero-padded like the keys.
  void window_gather(T* out, const Ring<T>& ring, const std::vector<T>& plane, int64_t h) {
    const int64_t K = s.kernel, Wp = s.padded_width(), edge = 2 * s.pad();
    for (int64_t a = 0; a < K; ++a) ring_rows[a] = ring.row(h - a + s.pad());
    weighted_sums(out, s.plane(), plane,
                  [&](int64_t a, int64_t c) { return ring_rows[a] + (a * K + c) * Wp + edge - c; },
                  [&](int64_t a, int64_t c) { return (h - a + edge) * Wp + edge - c; });
  }
};

Shape shape_of(const torch::Tensor& q, int64_t kernel, bool has_keys, bool has_rel, bool mask) {
  return Shape{q.size(0), q.size(1), q.size(2), q.size(3), q.size(4), kernel, has_keys, has_rel, mask};
}

template <typename T>
std::vector<torch::Tensor> forward_impl(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor rel_rows,
                                        torch::Tensor rel_cols, int64_t kernel, bool has_keys, bool has_rel, bool mask) {
  const Shape s = shape_of(q, kernel, has_keys, has_rel, mask);
  auto out = torch::empty_like(q);
  auto lse = torch::empty({s.batch, s.heads, s.height, s.width}, q.options());
  const T *qp = q.data_ptr<T>(), *kp = has_keys ? k.data_ptr<T>() : nullptr, *vp = v.data_ptr<T>();
  const T *rr = has_rel ? rel_rows.data_ptr<T>() : nullptr, *rc = has_rel ? rel_cols.data_ptr<T>() : nullptr;
  T *op = out.data_ptr<T>(), *lp = lse.data_ptr<T>();
  const int64_t W = s.width, KK = s.kernel * s.kernel, HW = s.plane(), block = s.dim * HW, rel = s.kernel * s.half();
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t first, int64_t last) {
    Task<T> task(s);
    for (int64_t t = first; t < last; ++t) {
      const int64_t n = t % s.heads, offset = t * block;
      if (has_keys) task.pad(kp + offset, task.keys);
      task.pad(vp + offset, task.values);
      for (int64_t h = 0; h < s.height; ++h) {
        task.row_logits(qp + offset, has_rel ? rr + n * rel : nullptr, has_rel ? rc + n * rel : nullptr, h);
        T* __restrict row_lse = lp + t * HW + h * W;
        T* __restrict total = task.delta.data();
        const T* logits = task.logits.data();
        for (int64_t w = 0; w < W; ++w) row_lse[w] = kNegInf<T>;
        for (int64_t o = 0; o < KK; ++o)
          for (int64_t w = 0; w < W; ++w) row_lse[w] = std::max(row_lse[w], logits[o * W + w]);
        task.probabilities(row_lse);  // unnormalised: exp(logit - max)
        std::fill(total, total + W, T(0));
        for (int64_t o = 0; o < KK; ++o)
          for (int64_t w = 0; w < W; ++w) total[w] += logits[o * W + w];
        for (int64_t w = 0; w < W; ++w) {
          row_lse[w] += std::log(total[w]);
          total[w] = T(1) / total[w];
        }
        for (int64_t o = 0; o < KK; ++o)
          for (int64_t w = 0; w < W; ++w) task.logits[o * W + w] *= total[w];
        task.window_sums(op + offset + h * W, HW, logits, task.values, h);
      }
    }
  });
  return {out, lse};
}

template <typename T>
std::vector<torch::Tensor> backward_impl(torch::Tensor grad_out, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                         torch::Tensor rel_rows, torch::Tensor rel_cols, torch::Tensor lse,
                                         int64_t kernel, bool has_keys, bool has_rel, bool mask) {
  const Shape s = shape_of(q, kernel, has_keys, has_rel, mask);
  auto grad_q = torch::empty_like(q);
  auto grad_k = has_keys ? torch::empty_like(q) : torch::Tensor();
  auto grad_v = torch::empty_like(q);
  auto grad_rows = torch::zeros({s.batch, s.heads, s.kernel, s.half()}, q.options());
  auto grad_cols = torch::zeros({s.batch, s.heads, s.kernel, s.half()}, q.options());
  const T *qp = q.data_ptr<T>(), *kp = has_keys ? k.data_ptr<T>() : nullptr, *vp = v.data_ptr<T>();
  const T *rr = has_rel ? rel_rows.data_ptr<T>() : nullptr, *rc = has_rel ? rel_cols.data_ptr<T>() : nullptr;
  const T *gp = grad_out.data_ptr<T>(), *lp = lse.data_ptr<T>();
  T *gq = grad_q.data_ptr<T>(), *gk = has_keys ? grad_k.data_ptr<T>() : nullptr, *gv = grad_v.data_ptr<T>();
  T *grr = grad_rows.data_ptr<T>(), *grc = grad_cols.data_ptr<T>();
  const int64_t W = s.width, K = s.kernel, KK = K * K, HW = s.plane(), block = s.dim * HW, half = s.half();
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t first, int64_t last) {
    Task<T> task(s);
    // The key and value gradients of a row need the weights of the K query rows around it: the
    // rows trail the queries by pad rows, and their sources (q, grad_out) are padded like keys.
    Ring<T> probabilities(s), scores(s);
    std::vector<T> queries(has_keys ? s.dim * s.padded_plane() : 0), grads(s.dim * s.padded_plane());
    for (int64_t t = first; t < last; ++t) {
      const int64_t n = t % s.heads, offset = t * block;
      const T* task_rows = has_rel ? rr + n * K * half : nullptr;
      const T* task_cols = has_rel ? rc + n * K * half : nullptr;
      if (has_keys) {
        task.pad(kp + offset, task.keys);
        task.pad(qp + offset, queries);
      }
      task.pad(vp + offset, task.values);
      task.pad(gp + offset, grads);
      probabilities.clear();
      scores.clear();
      const auto gather = [&](int64_t key_row) {
        task.window_gather(gv + offset + key_row * W, probabilities, grads, key_row);
        if (has_keys) task.window_gather(gk + offset + key_row * W, scores, queries, key_row);
      };
      for (int64_t h = 0; h < s.height; ++h) {
        task.row_logits(qp + offset, task_rows, task_cols, h);
        task.probabilities(lp + t * HW + h * W);
        const T* __restrict p = task.logits.data();
        T* __restrict ds = task.scores.data();
        // dp = grad_out . v per offset; delta = sum of p * dp (= grad_out . out, the softmax
        // backward's per-pixel constant, without keeping the output); ds = p * (dp - delta).
        std::fill(ds, ds + KK * W, T(0));
        task.window_dots(ds, gp + offset + h * W, HW, task.values, h);
        T* __restrict delta = task.delta.data();
        sum_of_products(delta, p, W, ds, W, KK, W, false);
        for (int64_t o = 0; o < KK; ++o)
          for (int64_t w = 0; w < W; ++w) ds[o * W + w] = p[o * W + w] * (ds[o * W + w] - delta[w]);
        T* gq_row = gq + offset + h * W;
        if (has_keys) task.window_sums(gq_row, HW, ds, task.keys, h);
        else
          for (int64_t d = 0; d < s.dim; ++d) std::fill(gq_row + d * HW, gq_row + d * HW + W, T(0));
        if (has_rel)
          task.relative_grads(gq_row, grr + t * K * half, grc + t * K * half, qp + offset, task_rows, task_cols, h);
        probabilities.store(h, p, W);
        scores.store(h, ds, W);
        if (h >= s.pad()) gather(h - s.pad());
      }
      for (int64_t h = s.height; h < s.height + s.pad(); ++h) {  // the last rows' windows reach below the image
        probabilities.clear(h);
        scores.clear(h);
        if (h >= s.pad()) gather(h - s.pad());
      }
    }
  });
  return {grad_q, grad_k, grad_v, grad_rows.sum(0), grad_cols.sum(0)};
}

}  // namespace

// Returns (out, lse).
std::vector<torch::Tensor> forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor rel_rows,
                                   torch::Tensor rel_cols, int64_t kernel, bool has_keys, bool has_rel, bool mask) {
  std::vector<torch::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "local_attention_forward", [&] {
    result = forward_impl<scalar_t>(q, k, v, rel_rows, rel_cols, kernel, has_keys, has_rel, mask);
  });
  return result;
}

// Returns (grad_q, grad_k, grad_v, grad_rel_rows, grad_rel_cols); the relative gradients are
// summed per image first, so that tasks never add into the same memory.
std::vector<torch::Tensor> backward(torch::Tensor grad_out, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                    torch::Tensor rel_rows, torch::Tensor rel_cols, torch::Tensor lse, int64_t kernel,
                                    bool has_keys, bool has_rel, bool mask) {
  std::vector<torch::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "local_attention_backward", [&] {
    result = backward_impl<scalar_t>(grad_out, q, k, v, rel_rows, rel_cols, lse, kernel, has_keys, has_rel, mask);
  });
  return result;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "local attention forward: (out, lse)");
  m.def("backward", &backward, "local attention backward: (grad_q, grad_k, grad_v, grad_rel_rows, grad_rel_cols)");
}
