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
// does. Backward adds the gradients of
// k and v into the task's own padded planes: tasks never write to the same memory.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// exp(x) for x <= 0 (softmax logits minus their maximum), written so that it vectorises:
// 2^n * p(r) with r = x - n ln 2 and a degree-6 Taylor polynomial (relative error < 3e-7).
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.4426950408889634f + 0.5f);
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

inline double exp_nonpositive(double x) { return std::exp(x); }

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

template <typename T>
struct Task {
  const Shape& s;
  std::vector<T> keys, values, logits, scores, rel_row, rel_col, lse, delta;

  explicit Task(const Shape& shape)
      : s(shape), keys(shape.has_keys ? shape.dim * shape.padded_plane() : 0), values(shape.dim * shape.padded_plane()),
        logits(shape.kernel * shape.kernel * shape.width), scores(shape.kernel * shape.kernel * shape.width),
        rel_row(shape.kernel * shape.width), rel_col(shape.kernel * shape.width), lse(shape.width), delta(shape.width) {}

  // (D, H, W) -> the zero-padded (D, H + K - 1, W + K - 1).
  void pad(const T* source, std::vector<T>& padded) const {
    std::fill(padded.begin(), padded.end(), T(0));
    const int64_t P = s.pad(), Wp = s.padded_width();
    for (int64_t d = 0; d < s.dim; ++d)
      for (int64_t h = 0; h < s.height; ++h)
        std::memcpy(padded.data() + d * s.padded_plane() + (h + P) * Wp + P, source + d * s.plane() + h * s.width,
                    s.width * sizeof(T));
  }

  // The padded planes' image part -> (D, H, W).
  void crop(const std::vector<T>& padded, T* target) const {
    const int64_t P = s.pad(), Wp = s.padded_width();
    for (int64_t d = 0; d < s.dim; ++d)
      for (int64_t h = 0; h < s.height; ++h)
        std::memcpy(target + d * s.plane() + h * s.width, padded.data() + d * s.padded_plane() + (h + P) * Wp + P,
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
        if (s.has_keys)
          sum_of_products(out, q + h * W, HW, keys.data() + at(h, a, c), s.padded_plane(), s.dim, W, true);
        if (s.mask)
          for (int64_t w = 0; w < W; ++w)
            if (!inside(h, a, c, w)) out[w] = kNegInf<T>;
      }
  }

  // In place: logits -> exp(logit - row_lse), the probabilities when row_lse is the log-sum-exp.
  void probabilities(const T* row_lse) {
    const int64_t W = s.width, KK = s.kernel * s.kernel;
    for (int64_t o = 0; o < KK; ++o) {
      T* __restrict p = logits.data() + o * W;
      for (int64_t w = 0; w < W; ++w) p[w] = p[w] == kNegInf<T> ? T(0) : exp_nonpositive(p[w] - row_lse[w]);
    }
  }

  // out[d] (+)= sum over the window of weights[o] * the plane's neighbour, for query row h.
  void window_sum(T* out, const T* weights, const std::vector<T>& plane, int64_t h, int64_t d, bool accumulate) {
    const int64_t W = s.width, K = s.kernel;
    using L = Lanes<T>;
    const T* base = plane.data() + d * s.padded_plane();
    int64_t w = 0;
    for (; w + L::size <= W; w += L::size) {
      typename L::type acc = accumulate ? L::load(out + w) : typename L::type{};
      for (int64_t a = 0; a < K; ++a)
        for (int64_t c = 0; c < K; ++c)
          acc += L::load(weights + (a * K + c) * W + w) * L::load(base + at(h, a, c) + w);
      L::store(out + w, acc);
    }
    for (; w < W; ++w) {
      T acc = accumulate ? out[w] : T(0);
      for (int64_t a = 0; a < K; ++a)
        for (int64_t c = 0; c < K; ++c) acc += weights[(a * K + c) * W + w] * base[at(h, a, c) + w];
      out[w] = acc;
    }
  }

  // plane's neighbour (a, c) of row h += weights[o] * source[d], for every offset and channel.
  void scatter_add(std::vector<T>& plane, const T* weights, const T* source, int64_t h) {
    const int64_t W = s.width, K = s.kernel, HW = s.plane();
    for (int64_t d = 0; d < s.dim; ++d) {
      const T* __restrict src = source + d * HW + h * W;
      for (int64_t a = 0; a < K; ++a)
        for (int64_t c = 0; c < K; ++c) {
          T* __restrict target = plane.data() + d * s.padded_plane() + at(h, a, c);
          const T* __restrict weight = weights + (a * K + c) * W;
          for (int64_t w = 0; w < W; ++w) target[w] += weight[w] * src[w];
        }
    }
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
        for (int64_t d = 0; d < s.dim; ++d) task.window_sum(op + offset + d * HW + h * W, logits, task.values, h, d, false);
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
    std::vector<T> key_grads(has_keys ? s.dim * s.padded_plane() : 0), value_grads(s.dim * s.padded_plane());
    for (int64_t t = first; t < last; ++t) {
      const int64_t n = t % s.heads, offset = t * block;
      const T* task_rows = has_rel ? rr + n * K * half : nullptr;
      const T* task_cols = has_rel ? rc + n * K * half : nullptr;
      if (has_keys) task.pad(kp + offset, task.keys);
      task.pad(vp + offset, task.values);
      std::fill(key_grads.begin(), key_grads.end(), T(0));
      std::fill(value_grads.begin(), value_grads.end(), T(0));
      for (int64_t h = 0; h < s.height; ++h) {
        task.row_logits(qp + offset, task_rows, task_cols, h);
        task.probabilities(lp + t * HW + h * W);
        const T* __restrict p = task.logits.data();
        T* __restrict ds = task.scores.data();
        // dp = grad_out . v per offset; delta = sum of p * dp (= grad_out . out, the softmax
        // backward's per-pixel constant, without keeping the output); ds = p * (dp - delta).
        for (int64_t a = 0; a < K; ++a)
          for (int64_t c = 0; c < K; ++c)
            sum_of_products(ds + (a * K + c) * W, gp + offset + h * W, HW, task.values.data() + task.at(h, a, c),
                            s.padded_plane(), s.dim, W, false);
        T* __restrict delta = task.delta.data();
        sum_of_products(delta, p, W, ds, W, KK, W, false);
        for (int64_t o = 0; o < KK; ++o)
          for (int64_t w = 0; w < W; ++w) ds[o * W + w] = p[o * W + w] * (ds[o * W + w] - delta[w]);
        task.scatter_add(value_grads, p, gp + offset, h);
        T* gq_row = gq + offset + h * W;
        for (int64_t d = 0; d < s.dim; ++d) {
          if (has_keys) task.window_sum(gq_row + d * HW, ds, task.keys, h, d, false);
          else std::fill(gq_row + d * HW, gq_row + d * HW + W, T(0));
        }
        if (has_keys) task.scatter_add(key_grads, ds, qp + offset, h);
        if (!has_rel) continue;
        // The relative logits: row offset a's embedding meets the first half of q, summed over
        // the window's columns; column offset c's the second half, summed over its rows.
        T* __restrict by_row = task.rel_row.data();
        T* __restrict by_col = task.rel_col.data();
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
        T* task_grad_rows = grr + t * K * half;
        T* task_grad_cols = grc + t * K * half;
        for (int64_t a = 0; a < K; ++a)
          for (int64_t d = 0; d < half; ++d) {
            const T* __restrict q_first = qp + offset + d * HW + h * W;
            const T* __restrict q_second = qp + offset + (d + half) * HW + h * W;
            T* __restrict gq_first = gq_row + d * HW;
            T* __restrict gq_second = gq_row + (d + half) * HW;
            const T r = task_rows[a * half + d], c = task_cols[a * half + d];
            const T* __restrict row = by_row + a * W;
            const T* __restrict col = by_col + a * W;
            T sum_rows = 0, sum_cols = 0;
            for (int64_t w = 0; w < W; ++w) {
              gq_first[w] += row[w] * r;
              gq_second[w] += col[w] * c;
              sum_rows += row[w] * q_first[w];
              sum_cols += col[w] * q_second[w];
            }
            task_grad_rows[a * half + d] += sum_rows;
            task_grad_cols[a * half + d] += sum_cols;
          }
      }
      if (has_keys) task.crop(key_grads, gk + offset);
      task.crop(value_grads, gv + offset);
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
