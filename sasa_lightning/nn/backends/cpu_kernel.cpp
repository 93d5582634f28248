// Local attention (eq. 3) on the CPU, forward and backward, without k^2-expanded tensors.
//
// Layout: q, k, v, out, grads (B, N, D, H, W) contiguous, float32 (or float64, for the tests);
// rel_rows, rel_cols (N, K, D/2).
// One task per (image, head); within it, one query row at a time, with every inner loop running
// along the row's W contiguous pixels so that the compiler vectorises it. The row's K*K logits
// (and in backward the score gradients) live in a small per-task buffer.
//
// Forward keeps, beside the output, the log-sum-exp of each pixel's logits (B, N, H, W); backward
// recomputes the probabilities from it, as flash attention does. Backward's gradients of k and v
// go to the rows the windows reached, which belong to the same (image, head): tasks never write to
// the same memory.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
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

struct Shape {
  int64_t batch, heads, dim, height, width, kernel;
  bool has_keys, has_rel, mask;
  int64_t plane() const { return height * width; }
  int64_t half() const { return dim / 2; }
  int64_t pad() const { return kernel / 2; }
};

// The query columns [begin, end) whose window offset c falls inside the image.
inline void valid_columns(const Shape& s, int64_t c, int64_t& begin, int64_t& end) {
  begin = std::max<int64_t>(0, s.pad() - c);
  end = std::min<int64_t>(s.width, s.width + s.pad() - c);
}

// logits[o * W + w] for query row h of one (image, head): q.k over the window, plus q.r.
// Neighbours outside the image have key 0 ("zeros": the logit is q.r alone) or are left out
// ("mask": -inf).
template <typename T>
void row_logits(const Shape& s, const T* q, const T* k, const T* rel_rows, const T* rel_cols,
                int64_t h, T* logits, T* rel_row, T* rel_col) {
  const int64_t W = s.width, K = s.kernel, P = s.pad(), HW = s.plane(), half = s.half();
  std::fill(rel_row, rel_row + K * W, T(0));
  std::fill(rel_col, rel_col + K * W, T(0));
  if (s.has_rel) {
    for (int64_t a = 0; a < K; ++a) {
      T* __restrict row = rel_row + a * W;
      T* __restrict col = rel_col + a * W;
      for (int64_t d = 0; d < half; ++d) {
        const T* __restrict q_first = q + d * HW + h * W;
        const T* __restrict q_second = q + (d + half) * HW + h * W;
        const T r = rel_rows[a * half + d], c = rel_cols[a * half + d];
        for (int64_t w = 0; w < W; ++w) {
          row[w] += q_first[w] * r;
          col[w] += q_second[w] * c;
        }
      }
    }
  }
  for (int64_t a = 0; a < K; ++a) {
    const int64_t hh = h + a - P;
    const bool row_inside = hh >= 0 && hh < s.height;
    for (int64_t c = 0; c < K; ++c) {
      T* __restrict out = logits + (a * K + c) * W;
      const T* __restrict row = rel_row + a * W;
      const T* __restrict col = rel_col + c * W;
      for (int64_t w = 0; w < W; ++w) out[w] = row[w] + col[w];
      int64_t begin = 0, end = 0;
      if (row_inside) valid_columns(s, c, begin, end);
      if (s.mask) {
        for (int64_t w = 0; w < begin; ++w) out[w] = kNegInf<T>;
        for (int64_t w = std::max(begin, end); w < W; ++w) out[w] = kNegInf<T>;
      }
      if (!s.has_keys || begin >= end) continue;
      const int64_t shift = c - P;
      for (int64_t d = 0; d < s.dim; ++d) {
        const T* __restrict qd = q + d * HW + h * W;
        const T* __restrict kd = k + d * HW + hh * W + shift;
        for (int64_t w = begin; w < end; ++w) out[w] += qd[w] * kd[w];
      }
    }
  }
}

// In place: logits -> probabilities, given each pixel's log-sum-exp.
template <typename T>
void probabilities(const Shape& s, T* logits, const T* lse) {
  const int64_t W = s.width, KK = s.kernel * s.kernel;
  for (int64_t o = 0; o < KK; ++o) {
    T* __restrict p = logits + o * W;
    for (int64_t w = 0; w < W; ++w) p[w] = p[w] == kNegInf<T> ? T(0) : exp_nonpositive(p[w] - lse[w]);
  }
}

template <typename T>
struct Buffers {
  std::vector<T> logits, scores, rel_row, rel_col, lse, delta;
  explicit Buffers(const Shape& s)
      : logits(s.kernel * s.kernel * s.width), scores(s.kernel * s.kernel * s.width), rel_row(s.kernel * s.width),
        rel_col(s.kernel * s.width), lse(s.width), delta(s.width) {}
};

Shape shape_of(const torch::Tensor& q, int64_t kernel, bool has_keys, bool has_rel, bool mask) {
  return Shape{q.size(0), q.size(1), q.size(2), q.size(3), q.size(4), kernel, has_keys, has_rel, mask};
}

}  // namespace

// Returns (out, lse).
template <typename T>
std::vector<torch::Tensor> forward_impl(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor rel_rows,
                                   torch::Tensor rel_cols, int64_t kernel, bool has_keys, bool has_rel, bool mask) {
  const Shape s = shape_of(q, kernel, has_keys, has_rel, mask);
  auto out = torch::zeros_like(q);
  auto lse = torch::empty({s.batch, s.heads, s.height, s.width}, q.options());
  const T *qp = q.template data_ptr<T>(), *kp = has_keys ? k.template data_ptr<T>() : nullptr, *vp = v.template data_ptr<T>();
  const T *rr = has_rel ? rel_rows.template data_ptr<T>() : nullptr, *rc = has_rel ? rel_cols.template data_ptr<T>() : nullptr;
  T *op = out.template data_ptr<T>(), *lp = lse.template data_ptr<T>();
  const int64_t W = s.width, K = s.kernel, P = s.pad(), HW = s.plane(), block = s.dim * HW;
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t first, int64_t last) {
    Buffers<T> buf(s);
    for (int64_t task = first; task < last; ++task) {
      const int64_t n = task % s.heads, offset = task * block;
      const T* rel_offset_rows = has_rel ? rr + n * K * s.half() : nullptr;
      const T* rel_offset_cols = has_rel ? rc + n * K * s.half() : nullptr;
      for (int64_t h = 0; h < s.height; ++h) {
        T* logits = buf.logits.data();
        row_logits<T>(s, qp + offset, has_keys ? kp + offset : nullptr, rel_offset_rows, rel_offset_cols, h, logits,
                   buf.rel_row.data(), buf.rel_col.data());
        T* __restrict lse_row = lp + task * HW + h * W;
        for (int64_t w = 0; w < W; ++w) lse_row[w] = kNegInf<T>;
        for (int64_t o = 0; o < K * K; ++o)
          for (int64_t w = 0; w < W; ++w) lse_row[w] = std::max(lse_row[w], logits[o * W + w]);
        T* __restrict total = buf.delta.data();
        std::fill(total, total + W, T(0));
        for (int64_t o = 0; o < K * K; ++o) {
          const T* __restrict l = logits + o * W;
          for (int64_t w = 0; w < W; ++w) total[w] += l[w] == kNegInf<T> ? T(0) : exp_nonpositive(l[w] - lse_row[w]);
        }
        for (int64_t w = 0; w < W; ++w) lse_row[w] += std::log(total[w]);
        probabilities<T>(s, logits, lse_row);
        for (int64_t a = 0; a < K; ++a) {
          const int64_t hh = h + a - P;
          if (hh < 0 || hh >= s.height) continue;
          for (int64_t c = 0; c < K; ++c) {
            int64_t begin, end;
            valid_columns(s, c, begin, end);
            const T* __restrict p = logits + (a * K + c) * W;
            for (int64_t d = 0; d < s.dim; ++d) {
              T* __restrict od = op + offset + d * HW + h * W;
              const T* __restrict vd = vp + offset + d * HW + hh * W + c - P;
              for (int64_t w = begin; w < end; ++w) od[w] += p[w] * vd[w];
            }
          }
        }
      }
    }
  });
  return {out, lse};
}

// Returns (grad_q, grad_k, grad_v, grad_rel_rows, grad_rel_cols); the relative gradients are per
// image (B, N, K, D/2), summed by the caller, so that tasks never add into the same memory.
template <typename T>
std::vector<torch::Tensor> backward_impl(torch::Tensor grad_out, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                    torch::Tensor rel_rows, torch::Tensor rel_cols, torch::Tensor out,
                                    torch::Tensor lse, int64_t kernel, bool has_keys, bool has_rel, bool mask) {
  const Shape s = shape_of(q, kernel, has_keys, has_rel, mask);
  auto grad_q = torch::zeros_like(q);
  auto grad_k = has_keys ? torch::zeros_like(q) : torch::Tensor();
  auto grad_v = torch::zeros_like(q);
  auto grad_rows = torch::zeros({s.batch, s.heads, s.kernel, s.half()}, q.options());
  auto grad_cols = torch::zeros({s.batch, s.heads, s.kernel, s.half()}, q.options());
  const T *qp = q.template data_ptr<T>(), *kp = has_keys ? k.template data_ptr<T>() : nullptr, *vp = v.template data_ptr<T>();
  const T *rr = has_rel ? rel_rows.template data_ptr<T>() : nullptr, *rc = has_rel ? rel_cols.template data_ptr<T>() : nullptr;
  const T *gp = grad_out.template data_ptr<T>(), *op = out.template data_ptr<T>(), *lp = lse.template data_ptr<T>();
  T *gq = grad_q.template data_ptr<T>(), *gk = has_keys ? grad_k.template data_ptr<T>() : nullptr, *gv = grad_v.template data_ptr<T>();
  T *grr = grad_rows.template data_ptr<T>(), *grc = grad_cols.template data_ptr<T>();
  const int64_t W = s.width, K = s.kernel, P = s.pad(), HW = s.plane(), block = s.dim * HW, half = s.half();
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t first, int64_t last) {
    Buffers<T> buf(s);
    for (int64_t task = first; task < last; ++task) {
      const int64_t n = task % s.heads, offset = task * block;
      const T* task_rows = has_rel ? rr + n * K * half : nullptr;
      const T* task_cols = has_rel ? rc + n * K * half : nullptr;
      for (int64_t h = 0; h < s.height; ++h) {
        T* p_all = buf.logits.data();
        T* ds_all = buf.scores.data();
        row_logits<T>(s, qp + offset, has_keys ? kp + offset : nullptr, task_rows, task_cols, h, p_all,
                   buf.rel_row.data(), buf.rel_col.data());
        probabilities<T>(s, p_all, lp + task * HW + h * W);
        // delta = sum_d grad_out * out, the softmax backward's per-pixel constant.
        T* __restrict delta = buf.delta.data();
        std::fill(delta, delta + W, T(0));
        for (int64_t d = 0; d < s.dim; ++d) {
          const T* __restrict g = gp + offset + d * HW + h * W;
          const T* __restrict o = op + offset + d * HW + h * W;
          for (int64_t w = 0; w < W; ++w) delta[w] += g[w] * o[w];
        }
        // ds = p * (grad_out . v - delta); grad_v += p * grad_out.
        for (int64_t a = 0; a < K; ++a) {
          const int64_t hh = h + a - P;
          const bool row_inside = hh >= 0 && hh < s.height;
          for (int64_t c = 0; c < K; ++c) {
            const T* __restrict p = p_all + (a * K + c) * W;
            T* __restrict ds = ds_all + (a * K + c) * W;
            for (int64_t w = 0; w < W; ++w) ds[w] = T(0);
            int64_t begin = 0, end = 0;
            if (row_inside) valid_columns(s, c, begin, end);
            for (int64_t d = 0; d < s.dim; ++d) {
              const T* __restrict g = gp + offset + d * HW + h * W;
              const T* __restrict vd = vp + offset + d * HW + hh * W + c - P;
              T* __restrict gvd = gv + offset + d * HW + hh * W + c - P;
              for (int64_t w = begin; w < end; ++w) {
                ds[w] += g[w] * vd[w];
                gvd[w] += p[w] * g[w];
              }
            }
            for (int64_t w = 0; w < W; ++w) ds[w] = p[w] * (ds[w] - delta[w]);
          }
        }
        // grad_q += ds . k; grad_k += ds * q.
        if (has_keys) {
          for (int64_t a = 0; a < K; ++a) {
            const int64_t hh = h + a - P;
            if (hh < 0 || hh >= s.height) continue;
            for (int64_t c = 0; c < K; ++c) {
              int64_t begin, end;
              valid_columns(s, c, begin, end);
              const T* __restrict ds = ds_all + (a * K + c) * W;
              for (int64_t d = 0; d < s.dim; ++d) {
                const T* __restrict qd = qp + offset + d * HW + h * W;
                const T* __restrict kd = kp + offset + d * HW + hh * W + c - P;
                T* __restrict gqd = gq + offset + d * HW + h * W;
                T* __restrict gkd = gk + offset + d * HW + hh * W + c - P;
                for (int64_t w = begin; w < end; ++w) {
                  gqd[w] += ds[w] * kd[w];
                  gkd[w] += ds[w] * qd[w];
                }
              }
            }
          }
        }
        if (!has_rel) continue;
        // The relative logits: row offset a's embedding meets the first half of q, summed over
        // the window's columns; column offset c's the second half, summed over its rows.
        T* __restrict by_row = buf.rel_row.data();
        T* __restrict by_col = buf.rel_col.data();
        std::fill(by_row, by_row + K * W, T(0));
        std::fill(by_col, by_col + K * W, T(0));
        for (int64_t a = 0; a < K; ++a)
          for (int64_t c = 0; c < K; ++c) {
            const T* __restrict ds = ds_all + (a * K + c) * W;
            for (int64_t w = 0; w < W; ++w) {
              by_row[a * W + w] += ds[w];
              by_col[c * W + w] += ds[w];
            }
          }
        T* task_grad_rows = grr + task * K * half;
        T* task_grad_cols = grc + task * K * half;
        for (int64_t a = 0; a < K; ++a)
          for (int64_t d = 0; d < half; ++d) {
            const T* __restrict q_first = qp + offset + d * HW + h * W;
            const T* __restrict q_second = qp + offset + (d + half) * HW + h * W;
            T* __restrict gq_first = gq + offset + d * HW + h * W;
            T* __restrict gq_second = gq + offset + (d + half) * HW + h * W;
            const T r = task_rows[a * half + d], c = task_cols[a * half + d];
            const T* __restrict row = by_row + a * W;
            const T* __restrict col = by_col + a * W;
            T sum_rows = T(0), sum_cols = T(0);
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
    }
  });
  return {grad_q, grad_k, grad_v, grad_rows.sum(0), grad_cols.sum(0)};
}

std::vector<torch::Tensor> forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor rel_rows,
                                   torch::Tensor rel_cols, int64_t kernel, bool has_keys, bool has_rel, bool mask) {
  std::vector<torch::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "local_attention_forward", [&] {
    result = forward_impl<scalar_t>(q, k, v, rel_rows, rel_cols, kernel, has_keys, has_rel, mask);
  });
  return result;
}

std::vector<torch::Tensor> backward(torch::Tensor grad_out, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                    torch::Tensor rel_rows, torch::Tensor rel_cols, torch::Tensor out,
                                    torch::Tensor lse, int64_t kernel, bool has_keys, bool has_rel, bool mask) {
  std::vector<torch::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "local_attention_backward", [&] {
    result = backward_impl<scalar_t>(grad_out, q, k, v, rel_rows, rel_cols, out, lse, kernel, has_keys, has_rel, mask);
  });
  return result;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "local attention forward: (out, lse)");
  m.def("backward", &backward, "local attention backward: (grad_q, grad_k, grad_v, grad_rel_rows, grad_rel_cols)");
}
