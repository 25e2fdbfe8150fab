// CUDA kernels of the seeded DARE ops. One thread per Philox block of 4 elements; full blocks
// use one aligned vector access, and a block whose 4 elements are all dropped skips the load
// it does not need (at p = 0.99 that is ~96% of blocks). Values are written by the same
// prune_store / dare_store as on the CPU (common/dare_math.h), on every path: a dropped dare
// entry is base's bits whether or not its group has a kept element. Spec v2 (skip_walk.cuh): a
// block per stripe piece; when keep is rare only the kept values are read.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/abs_sum.h"
#include "../common/dare_math.h"
#include "../ops/prune_args.h"
#include "launch.cuh"
#include "skip_walk.cuh"

namespace darex::cuda {
namespace {

template <typename acc_t>
struct InverseQ {
  const acc_t* q_rows;  // nullptr: one scalar for the whole tensor
  acc_t scalar;
  // inv[w] = 1/q for element i0 + w: its row's (cursor at i0) or the scalar. One division per
  // row met in the group, none for rows outside [0, n).
  __device__ __forceinline__ void group(const RowCursor& cursor, int64_t i0, int64_t n, acc_t inv[4]) const {
    if (q_rows == nullptr) {
#pragma unroll
      for (int w = 0; w < 4; ++w) inv[w] = scalar;
      return;
    }
    int64_t rows[4];
    cursor.group_rows(rows);
    int64_t last = -1;
    acc_t v = scalar;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = i0 + w;
      if (i >= 0 && i < n && rows[w] != last) {
        last = rows[w];
        v = inverse_q<acc_t>(q_rows[last]);
      }
      inv[w] = v;
    }
  }
};

__device__ __forceinline__ bool any_kept(const Philox4& r, uint32_t thr) {
  return is_kept(r.v[0], thr) | is_kept(r.v[1], thr) | is_kept(r.v[2], thr) | is_kept(r.v[3], thr);
}

template <typename scalar_t, typename acc_t>
struct PruneOp {
  scalar_t* x;
  int64_t n;
  uint32_t thr;
  bool vec;
  InverseQ<acc_t> inv;
  int64_t row_len;  // > 0 with per-row q
  __device__ __forceinline__ void operator()(int64_t i0, const Philox4& r, const RowCursor& cursor) const {
    if (!any_kept(r, thr)) {  // all four dropped: zeros, nothing read
      if (vec && i0 + 4 <= n) {
        Vec4<scalar_t> v;
#pragma unroll
        for (int w = 0; w < 4; ++w) v.v[w] = storage_zero<scalar_t>();
        *reinterpret_cast<Vec4<scalar_t>*>(x + i0) = v;
        return;
      }
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const int64_t i = i0 + w;
        if (i >= 0 && i < n) x[i] = storage_zero<scalar_t>();
      }
      return;
    }
    acc_t s[4];
    inv.group(cursor, i0, n, s);
    if (vec && i0 + 4 <= n) {
      Vec4<scalar_t> v = *reinterpret_cast<const Vec4<scalar_t>*>(x + i0);
#pragma unroll
      for (int w = 0; w < 4; ++w) v.v[w] = prune_store(v.v[w], s[w], is_kept(r.v[w], thr));
      *reinterpret_cast<Vec4<scalar_t>*>(x + i0) = v;
      return;
    }
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = i0 + w;
      if (i < 0 || i >= n) continue;
      x[i] = prune_store(x[i], s[w], is_kept(r.v[w], thr));
    }
  }
};

template <typename scalar_t, typename acc_t>
struct DareOp {
  const scalar_t* ft;
  const scalar_t* base;
  scalar_t* out;
  int64_t n;
  uint32_t thr;
  bool vec;
  InverseQ<acc_t> inv;
  int64_t row_len;  // > 0 with per-row q
  __device__ __forceinline__ void operator()(int64_t i0, const Philox4& r, const RowCursor& cursor) const {
    const bool any = any_kept(r, thr);
    acc_t s[4];
    if (any) inv.group(cursor, i0, n, s);
    if (vec && i0 + 4 <= n) {
      const Vec4<scalar_t> b = *reinterpret_cast<const Vec4<scalar_t>*>(base + i0);
      Vec4<scalar_t> o = b;
      if (any) {
        const Vec4<scalar_t> f = *reinterpret_cast<const Vec4<scalar_t>*>(ft + i0);
#pragma unroll
        for (int w = 0; w < 4; ++w) o.v[w] = dare_store(f.v[w], b.v[w], s[w], is_kept(r.v[w], thr));
      }
      *reinterpret_cast<Vec4<scalar_t>*>(out + i0) = o;
      return;
    }
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = i0 + w;
      if (i < 0 || i >= n) continue;
      out[i] = any ? dare_store(ft[i], base[i], s[w], is_kept(r.v[w], thr)) : base[i];
    }
  }
};

struct MaskOp {
  bool* m;
  int64_t n;
  uint32_t thr;
  bool vec;
  int64_t row_len = 0;  // no per-row data
  __device__ __forceinline__ void operator()(int64_t i0, const Philox4& r, const RowCursor&) const {
    if (vec && i0 + 4 <= n) {
      Vec4<bool> v;
#pragma unroll
      for (int w = 0; w < 4; ++w) v.v[w] = is_kept(r.v[w], thr);
      *reinterpret_cast<Vec4<bool>*>(m + i0) = v;
      return;
    }
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const int64_t i = i0 + w;
      if (i >= 0 && i < n) m[i] = is_kept(r.v[w], thr);
    }
  }
};

// ---- spec v2 ops: op(pieces, begin, len, rare, count), run by a whole block per piece.

template <typename acc_t>
struct RowInverse {
  const acc_t* q_rows;  // nullptr: the scalar
  int64_t row_len;
  acc_t scalar;
  __device__ __forceinline__ acc_t at(int64_t e) const {
    return q_rows == nullptr ? scalar : inverse_q<acc_t>(q_rows[e / row_len]);
  }
};

// flags[j] = 1 iff element begin + j of the piece is kept. Ends with a barrier.
__device__ __forceinline__ void keep_flags(const StripePieces& sp, int len, const int16_t* rare, int count,
                                           uint8_t* flags) {
  for (int j = threadIdx.x; j < len; j += kSkipThreads) flags[j] = sp.rare_is_keep ? 0 : 1;
  __syncthreads();
  for (int j = threadIdx.x; j < count; j += kSkipThreads) flags[rare[j]] = sp.rare_is_keep ? 1 : 0;
  __syncthreads();
}

struct SkipMaskOp {
  bool* m;
  __device__ __forceinline__ void operator()(const StripePieces& sp, int64_t begin, int len, const int16_t* rare,
                                             int count) const {
    for (int j = threadIdx.x; j < len; j += kSkipThreads) m[begin + j] = !sp.rare_is_keep;
    __syncthreads();
    for (int j = threadIdx.x; j < count; j += kSkipThreads) m[begin + rare[j]] = sp.rare_is_keep;
  }
};

template <typename scalar_t, typename acc_t>
struct SkipPruneOp {
  scalar_t* x;
  RowInverse<acc_t> inv;
  __device__ __forceinline__ void operator()(const StripePieces& sp, int64_t begin, int len, const int16_t* rare,
                                             int count) const {
    if (sp.rare_is_keep) {  // read the kept values, zero the piece, store them
      __shared__ alignas(8) unsigned char raw[kSkipStripe * sizeof(scalar_t)];
      scalar_t* vals = reinterpret_cast<scalar_t*>(raw);
      for (int j = threadIdx.x; j < count; j += kSkipThreads) {
        const int64_t e = begin + rare[j];
        vals[j] = prune_store(x[e], inv.at(e), true);
      }
      __syncthreads();
      for (int j = threadIdx.x; j < len; j += kSkipThreads) x[begin + j] = storage_zero<scalar_t>();
      __syncthreads();
      for (int j = threadIdx.x; j < count; j += kSkipThreads) x[begin + rare[j]] = vals[j];
      return;
    }
    __shared__ uint8_t flags[kSkipStripe];
    keep_flags(sp, len, rare, count, flags);
    for (int j = threadIdx.x; j < len; j += kSkipThreads) {
      const int64_t e = begin + j;
      x[e] = prune_store(x[e], inv.at(e), flags[j] != 0);
    }
  }
};

template <typename scalar_t, typename acc_t>
struct SkipDareOp {
  const scalar_t* ft;
  const scalar_t* base;
  scalar_t* out;
  RowInverse<acc_t> inv;
  __device__ __forceinline__ void operator()(const StripePieces& sp, int64_t begin, int len, const int16_t* rare,
                                             int count) const {
    if (sp.rare_is_keep) {  // kept results first (out may alias finetuned), base copied unless out is base
      __shared__ alignas(8) unsigned char raw[kSkipStripe * sizeof(scalar_t)];
      scalar_t* vals = reinterpret_cast<scalar_t*>(raw);
      for (int j = threadIdx.x; j < count; j += kSkipThreads) {
        const int64_t e = begin + rare[j];
        vals[j] = dare_store(ft[e], base[e], inv.at(e), true);
      }
      __syncthreads();
      if (out != base)
        for (int j = threadIdx.x; j < len; j += kSkipThreads) out[begin + j] = base[begin + j];
      __syncthreads();
      for (int j = threadIdx.x; j < count; j += kSkipThreads) out[begin + rare[j]] = vals[j];
      return;
    }
    __shared__ uint8_t flags[kSkipStripe];
    keep_flags(sp, len, rare, count, flags);
    for (int j = threadIdx.x; j < len; j += kSkipThreads) {
      const int64_t e = begin + j;
      out[e] = dare_store(ft[e], base[e], inv.at(e), flags[j] != 0);
    }
  }
};

template <typename acc_t>
RowInverse<acc_t> make_row_inverse(const std::optional<at::Tensor>& q_rows, int64_t row_len, double q) {
  return RowInverse<acc_t>{q_rows ? q_rows->data_ptr<acc_t>() : nullptr, row_len,
                           inverse_q<acc_t>(static_cast<acc_t>(q))};
}

template <typename Op>
void launch(const Op& op, uint64_t seed, uint64_t offset, int64_t n, int device) {
  const uint64_t blocks = philox_blocks(offset, n);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  auto* kernel = seeded_blocks_kernel<Op>;
  kernel<<<occupancy_grid(kernel, blocks, device), kThreads, 0, stream>>>(op, seed, offset, blocks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t>
InverseQ<acc_t> make_inverse(const std::optional<at::Tensor>& q_rows, double q) {
  return InverseQ<acc_t>{q_rows ? q_rows->data_ptr<acc_t>() : nullptr,
                         inverse_q<acc_t>(static_cast<acc_t>(q))};
}

void prune_cuda(at::Tensor& delta, double p, int64_t seed, int64_t offset,
                const std::optional<at::Tensor>& q_rows, double q, int64_t mask_spec) {
  TORCH_CHECK(delta.is_cuda(), "delta must be a CUDA tensor");
  const int64_t row_len = check_prune_args(delta, p, offset, q_rows, q, mask_spec);
  mask_spec = effective_mask_spec(mask_spec, p);
  const int64_t n = delta.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(delta.device());
  at::Tensor work = delta.is_contiguous() ? delta : delta.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_prune_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    scalar_t* x = work.data_ptr<scalar_t>();
    if (mask_spec == kMaskSkip) {
      const at::Tensor table = skip_table_on(p, work.device());
      launch_skip(SkipPruneOp<scalar_t, acc_t>{x, make_row_inverse<acc_t>(q_rows, row_len, q)},
                  stripe_pieces(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n, table, p),
                  delta.get_device());
      return;
    }
    const PruneOp<scalar_t, acc_t> op{x, n, drop_threshold(p),
                                      vec4_aligned<scalar_t>(x, static_cast<uint64_t>(offset)),
                                      make_inverse<acc_t>(q_rows, q), q_rows ? row_len : 0};
    launch(op, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n, delta.get_device());
  });
  if (!work.is_same(delta)) delta.copy_(work);
}

void dare_out_cuda(const at::Tensor& finetuned, const at::Tensor& base, double p, int64_t seed,
                   int64_t offset, const std::optional<at::Tensor>& q_rows, double q,
                   at::Tensor& out, int64_t mask_spec) {
  TORCH_CHECK(finetuned.is_cuda(), "finetuned must be a CUDA tensor");
  const int64_t row_len = check_dare_args(finetuned, base, p, offset, q_rows, q, out, mask_spec);
  mask_spec = effective_mask_spec(mask_spec, p);
  const int64_t n = finetuned.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(finetuned.device());
  const at::Tensor ft = finetuned.contiguous();
  const at::Tensor bs = base.contiguous();
  at::Tensor dst = out.is_contiguous() ? out : at::empty(out.sizes(), out.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ft.scalar_type(), "darex_dare_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    const scalar_t* f = ft.data_ptr<scalar_t>();
    const scalar_t* b = bs.data_ptr<scalar_t>();
    scalar_t* o = dst.data_ptr<scalar_t>();
    const uint64_t off = static_cast<uint64_t>(offset);
    if (mask_spec == kMaskSkip) {
      const at::Tensor table = skip_table_on(p, ft.device());
      launch_skip(SkipDareOp<scalar_t, acc_t>{f, b, o, make_row_inverse<acc_t>(q_rows, row_len, q)},
                  stripe_pieces(static_cast<uint64_t>(seed), off, n, table, p), finetuned.get_device());
      return;
    }
    const bool vec = vec4_aligned<scalar_t>(f, off) && vec4_aligned<scalar_t>(b, off) &&
                     vec4_aligned<scalar_t>(o, off);
    const DareOp<scalar_t, acc_t> op{f, b, o, n, drop_threshold(p), vec,
                                     make_inverse<acc_t>(q_rows, q), q_rows ? row_len : 0};
    launch(op, static_cast<uint64_t>(seed), off, n, finetuned.get_device());
  });
  if (!dst.is_same(out)) out.copy_(dst);
}

at::Tensor keep_mask_cuda(const at::Tensor& like, double p, int64_t seed, int64_t offset, int64_t mask_spec) {
  check_p(p);
  check_offset(offset);
  check_mask_spec(mask_spec);
  mask_spec = effective_mask_spec(mask_spec, p);
  const c10::cuda::CUDAGuard guard(like.device());
  at::Tensor mask = at::empty(like.sizes(), like.options().dtype(at::kBool));
  const int64_t n = mask.numel();
  if (n == 0) return mask;
  bool* m = mask.data_ptr<bool>();
  if (mask_spec == kMaskSkip) {
    skip_keep_mask(m, p, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n, like.device());
    return mask;
  }
  const MaskOp op{m, n, drop_threshold(p), vec4_aligned<bool>(m, static_cast<uint64_t>(offset))};
  launch(op, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n, like.get_device());
  return mask;
}

// kept_abs_sum in the order of common/abs_sum.h: block = chunk, thread = lane. Thread j adds
// the kAbsSumGroup elements at kAbsSumGroup * j of each step in index order (their words come
// from one Philox block, or two when offset is not a multiple of 4), then the block combines
// its lanes by the fixed tree. partials[2c], partials[2c + 1]: chunk c's kept and total sums.
// Scalar loads: a Vec4 load measured slower on an H200 (2^28 bf16: 0.85 ms against 0.61 ms).
template <typename scalar_t>
__global__ void __launch_bounds__(kAbsSumLanes) kept_abs_sum_kernel(const scalar_t* x, int64_t n,
                                                                     uint64_t seed, uint64_t offset,
                                                                     uint32_t thr, int64_t chunks,
                                                                     double* partials, const bool* keep) {
  __shared__ double sk[kAbsSumLanes], st[kAbsSumLanes];
  const int j = static_cast<int>(threadIdx.x);
  for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {  // uniform over the block
    double kept = 0.0, total = 0.0;
    const int64_t end = n - c * kAbsSumChunk < kAbsSumChunk ? n : (c + 1) * kAbsSumChunk;
    for (int64_t i0 = c * kAbsSumChunk + kAbsSumGroup * j; i0 < end; i0 += kAbsSumStep) {
      const uint64_t g = offset + static_cast<uint64_t>(i0);
      const uint32_t lead = static_cast<uint32_t>(g & 3);
      Philox4 r0{{0u, 0u, 0u, 0u}}, r1{{0u, 0u, 0u, 0u}};
      if (keep == nullptr) {  // spec v1: the words; spec v2 passes the keep mask instead
        r0 = philox_block(seed, g >> 2);
        r1 = lead != 0 ? philox_block(seed, (g >> 2) + 1) : r0;
      }
#pragma unroll
      for (int w = 0; w < kAbsSumGroup; ++w) {
        if (i0 + w >= end) break;
        const uint32_t idx = lead + static_cast<uint32_t>(w);
        const bool k = keep != nullptr ? keep[i0 + w] : is_kept(idx < 4 ? r0.v[idx] : r1.v[idx - 4], thr);
        const double a = fabs(static_cast<double>(x[i0 + w]));
        total = __dadd_rn(total, a);
        if (k) kept = __dadd_rn(kept, a);
      }
    }
    sk[j] = kept;
    st[j] = total;
    __syncthreads();
#pragma unroll
    for (int s = kAbsSumLanes / 2; s > 0; s >>= 1) {
      if (j < s) {
        sk[j] = __dadd_rn(sk[j], sk[j + s]);
        st[j] = __dadd_rn(st[j], st[j + s]);
      }
      __syncthreads();
    }
    if (j == 0) {
      partials[2 * c] = sk[0];
      partials[2 * c + 1] = st[0];
    }
    __syncthreads();  // sk / st are reused by the block's next chunk
  }
}

// The chunk sums in index order: result = ((+0.0 + chunk_0) + chunk_1) + ... Thread 0 adds; the
// block stages tiles of partials in shared memory, so the serial chain never waits on DRAM.
constexpr int kOrderedTile = 1024;

__global__ void __launch_bounds__(kOrderedTile) ordered_sum_kernel(const double* partials, int64_t chunks,
                                                                    double* result) {
  __shared__ double tile[2 * kOrderedTile];
  double kept = 0.0, total = 0.0;  // meaningful in thread 0
  for (int64_t first = 0; first < chunks; first += kOrderedTile) {
    const int64_t count = chunks - first < kOrderedTile ? chunks - first : kOrderedTile;
    for (int64_t t = threadIdx.x; t < 2 * count; t += kOrderedTile) tile[t] = partials[2 * first + t];
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int64_t c = 0; c < count; ++c) {
        kept = __dadd_rn(kept, tile[2 * c]);
        total = __dadd_rn(total, tile[2 * c + 1]);
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    result[0] = to_storage<double>(kept);
    result[1] = to_storage<double>(total);
  }
}

at::Tensor kept_abs_sum_cuda(const at::Tensor& delta, double p, int64_t seed, int64_t offset, int64_t mask_spec) {
  TORCH_CHECK(delta.is_cuda(), "delta must be a CUDA tensor");
  check_prune_args(delta, p, offset, std::nullopt, 1.0, mask_spec);
  mask_spec = effective_mask_spec(mask_spec, p);
  const c10::cuda::CUDAGuard guard(delta.device());
  const int64_t n = delta.numel();
  if (n == 0) return at::zeros({2}, delta.options().dtype(at::kDouble));
  const at::Tensor x = delta.contiguous();
  const int64_t chunks = (n + kAbsSumChunk - 1) / kAbsSumChunk;
  // A block per chunk up to the grid limit; a smaller grid only loops, the order is fixed.
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(chunks, int64_t(1) << 30));
  at::Tensor partials = at::empty({chunks, 2}, delta.options().dtype(at::kDouble));
  at::Tensor result = at::empty({2}, delta.options().dtype(at::kDouble));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(delta.get_device()).stream();
  at::Tensor keep;  // spec v2: the keep mask, one byte per element (the sums read it in their order)
  if (mask_spec == kMaskSkip) {
    keep = at::empty({n}, delta.options().dtype(at::kBool));
    skip_keep_mask(keep.data_ptr<bool>(), p, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n,
                   delta.device());
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_kept_abs_sum_cuda", [&] {
    kept_abs_sum_kernel<scalar_t><<<grid, static_cast<unsigned>(kAbsSumLanes), 0, stream>>>(
        x.data_ptr<scalar_t>(), n, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
        drop_threshold(p), chunks, partials.data_ptr<double>(), keep.defined() ? keep.data_ptr<bool>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  ordered_sum_kernel<<<1, kOrderedTile, 0, stream>>>(partials.data_ptr<double>(), chunks, result.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return result;
}

}  // namespace

// Declared in skip_walk.cuh: a block per stripe piece. Also the first pass of the seeded
// storage kernels under spec v2.
void skip_keep_mask(bool* m, double p, uint64_t seed, uint64_t offset, int64_t n, const at::Device& device) {
  const at::Tensor table = skip_table_on(p, device);
  launch_skip(SkipMaskOp{m}, stripe_pieces(seed, offset, n, table, p), device.index());
}

TORCH_LIBRARY_IMPL(darex, CUDA, m) {
  m.impl("prune_", &prune_cuda);
  m.impl("dare_out", &dare_out_cuda);
  m.impl("keep_mask", &keep_mask_cuda);
  m.impl("kept_abs_sum", &kept_abs_sum_cuda);
}

}  // namespace darex::cuda
