// CUDA kernels of the exact top-k ops: radix select on order-preserving keys
// (common/radix_key.h), 11-bit digits, no sort, no index tensor, no score tensor: keys are
// computed from the data on the fly in every pass.
//
// Whole tensor: one multi-block histogram kernel per digit (shared-memory bins, flushed into a
// global histogram), the digit walk on the host. The write then takes every key above the
// threshold key K; when only some of the keys equal to K are taken, the tensor is cut into
// fixed chunks, keys == K are counted per chunk and scanned, and only the chunk where the
// running count crosses `need_eq` ranks its ties element by element (lower index wins).
// Per row: one CUDA block per row does all passes and the ordered write in shared memory;
// a few very long rows run the whole-tensor path row by row instead, so the GPU stays busy.
//
// NaN is refused before anything is written: whole-tensor selection counts it in its first
// histogram pass, per-row selection runs a counting pass first.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "../common/dare_math.h"
#include "../common/radix_key.h"
#include "../ops/prune_args.h"
#include "../ops/topk_args.h"
#include "launch.cuh"

namespace darex::cuda {
namespace {

using ull = unsigned long long;

constexpr int kUnroll = 4;                    // independent loads in flight per thread
constexpr int kTile = kThreads * kUnroll;     // elements per block per histogram iteration
constexpr int kBinsPerThread = kRadixBins / kThreads;
constexpr int64_t kNanSpan = 1 << 14;         // elements per block-iteration of the NaN count
constexpr int64_t kMaxChunks = 1 << 20;       // chunks of the ordered whole-tensor write
constexpr int64_t kMinChunkTiles = 16;
constexpr int64_t kWideRow = 1 << 20;         // fewer rows than SMs this long: whole-tensor path
constexpr int64_t kRowKernelMaxCols = int64_t(1) << 30;  // keeps per-row uint32 counts exact
static_assert(kRadixBins % kThreads == 0, "each thread owns whole bins in the digit search");
static_assert(kThreads % 32 == 0, "histogram updates are warp-aggregated");

// Storage bits of each dtype and its exponent mask (for the NaN test); same as the CPU kernel.
template <typename scalar_t> struct Bits;
template <> struct Bits<float> { using U = uint32_t; static constexpr U kExp = 0x7F800000u; };
template <> struct Bits<double> { using U = uint64_t; static constexpr U kExp = 0x7FF0000000000000ull; };
template <> struct Bits<c10::Half> { using U = uint16_t; static constexpr U kExp = 0x7C00u; };
template <> struct Bits<c10::BFloat16> { using U = uint16_t; static constexpr U kExp = 0x7F80u; };

template <typename scalar_t>
using acc_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

__device__ __forceinline__ float abs_acc(float v) { return fabsf(v); }
__device__ __forceinline__ double abs_acc(double v) { return fabs(v); }
__device__ __forceinline__ uint32_t bits_of(float v) { return __float_as_uint(v); }
__device__ __forceinline__ uint64_t bits_of(double v) {
  return static_cast<uint64_t>(__double_as_longlong(v));
}

// The key bits digit `d` of pass `pass` contributes to the prefix (inverse of radix_digit).
template <typename U>
DAREX_HD_INLINE U digit_bits(uint32_t d, int pass) {
  const int shift = RadixTraits<U>::kBits - kRadixBits * (pass + 1);
  return shift >= 0 ? static_cast<U>(static_cast<U>(d) << shift)
                    : static_cast<U>(static_cast<U>(d) >> (-shift));
}

// ---- key sources: key(i) and nan(i) of element i; row(r, cols) views row r ---------------

template <typename Key>
struct ScoreKeys {  // the scores themselves
  using U = Key;
  const U* bits;
  U exp_mask;
  bool largest;
  DAREX_HD ScoreKeys row(int64_t r, int64_t cols) const { return {bits + r * cols, exp_mask, largest}; }
  __device__ __forceinline__ U key(int64_t i) const { return radix_key<U>(bits[i], largest); }
  __device__ __forceinline__ bool nan(int64_t i) const { return is_nan_bits<U>(bits[i], exp_mask); }
};

template <typename Key>
struct AbsKeys {  // |x|: the sign bit cleared
  using U = Key;
  const U* bits;
  U exp_mask;
  DAREX_HD AbsKeys row(int64_t r, int64_t cols) const { return {bits + r * cols, exp_mask}; }
  __device__ __forceinline__ U key(int64_t i) const {
    return radix_key<U>(static_cast<U>(bits[i] & static_cast<U>(~RadixTraits<U>::kSign)), true);
  }
  __device__ __forceinline__ bool nan(int64_t i) const { return is_nan_bits<U>(bits[i], exp_mask); }
};

template <typename scalar_t>
struct WandaKeys {  // |x_j| * a_j in the accumulation type; a row view indexes columns
  using acc_t = acc_of<scalar_t>;
  using U = typename Bits<acc_t>::U;
  const scalar_t* x;
  const acc_t* act;
  DAREX_HD WandaKeys row(int64_t r, int64_t cols) const { return {x + r * cols, act}; }
  __device__ __forceinline__ U score_bits(int64_t j) const {
    return bits_of(acc_mul(abs_acc(static_cast<acc_t>(x[j])), act[j]));
  }
  __device__ __forceinline__ U key(int64_t j) const { return radix_key<U>(score_bits(j), true); }
  __device__ __forceinline__ bool nan(int64_t j) const {
    return is_nan_bits<U>(score_bits(j), Bits<acc_t>::kExp);
  }
};

// ---- writers: write(i, selected) for every element, exactly once -------------------------

struct MaskWriter {
  bool* out;
  DAREX_HD MaskWriter row(int64_t r, int64_t cols) const { return {out + r * cols}; }
  DAREX_HD bool writes_kept() const { return true; }
  __device__ __forceinline__ void write(int64_t i, bool selected) const { out[i] = selected; }
};

// Kept entries scaled by 1/q (when given), dropped ones set to exactly 0. Reads x[i] only
// for the element it writes, so it is safe on the tensor the keys are read from.
template <typename scalar_t>
struct PruneWriter {
  using acc_t = acc_of<scalar_t>;
  scalar_t* x;
  acc_t inv;
  bool scale;
  DAREX_HD PruneWriter row(int64_t r, int64_t cols) const { return {x + r * cols, inv, scale}; }
  DAREX_HD bool writes_kept() const { return scale; }
  __device__ __forceinline__ void write(int64_t i, bool keep) const {
    if (!keep) {
      x[i] = static_cast<scalar_t>(acc_t(0));
    } else if (scale) {
      x[i] = static_cast<scalar_t>(prune_value(static_cast<acc_t>(x[i]), inv, true));
    }
  }
};

// ---- kernels ----------------------------------------------------------------------------

// One count per distinct digit of the warp: pass-0 digits of similar scores mostly collide,
// and 32 lanes hitting one shared counter would serialize. All 32 lanes must call it.
__device__ __forceinline__ void hist_add(uint32_t* bins, bool valid, uint32_t digit) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  const unsigned peers = __match_any_sync(0xFFFFFFFFu, valid ? digit : 0xFFFFFFFFu);
  if (valid && (threadIdx.x & 31u) == static_cast<unsigned>(__ffs(static_cast<int>(peers)) - 1))
    atomicAdd(&bins[digit], static_cast<uint32_t>(__popc(peers)));
#else
  if (valid) atomicAdd(&bins[digit], 1u);
#endif
}

// Digit histogram of pass `pass` over the keys whose fixed prefix equals `prefix` (pass 0:
// all keys, and NaNs are counted). Block-local 32-bit bins: the grid keeps every block under
// 2^31 elements (flat_grid).
template <typename Keys>
__global__ void __launch_bounds__(kThreads) radix_hist_kernel(Keys keys, int64_t n, int pass,
                                                               typename Keys::U prefix, ull* hist,
                                                               ull* nan_count) {
  using U = typename Keys::U;
  __shared__ uint32_t bins[kRadixBins];
  for (int b = threadIdx.x; b < kRadixBins; b += kThreads) bins[b] = 0;
  __syncthreads();
  const U mask = radix_prefix_mask<U>(pass);
  ull nans = 0;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kTile;
  // `base` is uniform over the block, so every lane reaches hist_add together.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kTile; base < n; base += step) {
    U key[kUnroll];
    bool ok[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + static_cast<int64_t>(u * kThreads + threadIdx.x);
      ok[u] = i < n;
      key[u] = ok[u] ? keys.key(i) : U(0);
      if (pass == 0 && ok[u]) nans += keys.nan(i);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      hist_add(bins, ok[u] && (key[u] & mask) == prefix, radix_digit<U>(key[u], pass));
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kRadixBins; b += kThreads)
    if (bins[b] != 0) atomicAdd(&hist[b], static_cast<ull>(bins[b]));
  if (nans != 0) atomicAdd(nan_count, nans);
}

// NaN count over n elements seen as rows of `cols` (the last may be short); a block per row.
template <typename Keys>
__global__ void __launch_bounds__(kThreads) nan_count_kernel(Keys keys, int64_t n, int64_t cols,
                                                              ull* nan_count) {
  const int64_t rows = (n + cols - 1) / cols;
  ull nans = 0;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const Keys row = keys.row(r, cols);
    const int64_t len = n - r * cols < cols ? n - r * cols : cols;
    for (int64_t j = threadIdx.x; j < len; j += kThreads) nans += row.nan(j);
  }
  if (nans != 0) atomicAdd(nan_count, nans);
}

template <typename Writer>
__global__ void __launch_bounds__(kThreads) fill_kernel(Writer w, int64_t n, bool selected) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride)
    w.write(i, selected);
}

// selected = key > thr, or key == thr when take_eq.
template <typename Keys, typename Writer>
__global__ void __launch_bounds__(kThreads) threshold_write_kernel(Keys keys, Writer w, int64_t n,
                                                                    typename Keys::U thr, bool take_eq) {
  using U = typename Keys::U;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const U key = keys.key(i);
    w.write(i, key > thr || (take_eq && key == thr));
  }
}

// counts[b] = number of keys == thr in chunk b = [b * chunk, min(n, (b + 1) * chunk)).
template <typename Keys>
__global__ void __launch_bounds__(kThreads) eq_count_kernel(Keys keys, int64_t n, int64_t chunk,
                                                             typename Keys::U thr, int64_t* counts) {
  using Reduce = cub::BlockReduce<long long, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = n - begin < chunk ? n : begin + chunk;
  long long count = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) count += keys.key(i) == thr;
  const long long total = Reduce(tmp).Sum(count);
  if (threadIdx.x == 0) counts[blockIdx.x] = total;
}

// Writes chunk b (same partition as eq_count_kernel). Keys == thr before this chunk:
// inclusive[b] - counts[b]; the first need_eq of them overall are selected. A chunk entirely
// below or above that rank takes all or none of its ties; only the chunk crossing it ranks
// its ties tile by tile with a block scan, in index order.
template <typename Keys, typename Writer>
__global__ void __launch_bounds__(kThreads) ordered_write_kernel(Keys keys, Writer w, int64_t n,
                                                                  int64_t chunk, typename Keys::U thr,
                                                                  int64_t need_eq, const int64_t* counts,
                                                                  const int64_t* inclusive) {
  using U = typename Keys::U;
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = n - begin < chunk ? n : begin + chunk;
  const int64_t after = inclusive[blockIdx.x];
  const int64_t before = after - counts[blockIdx.x];
  if (after <= need_eq || before >= need_eq) {  // uniform over the block
    const bool take_eq = after <= need_eq;
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const U key = keys.key(i);
      w.write(i, key > thr || (take_eq && key == thr));
    }
    return;
  }
  int64_t rank = before;  // ties before the current tile; uniform over the block
  for (int64_t base = begin; base < end; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const bool valid = i < end;
    const U key = valid ? keys.key(i) : U(0);
    if (rank >= need_eq) {
      if (valid) w.write(i, key > thr);
      continue;
    }
    const int eq = (valid && key == thr) ? 1 : 0;
    int pos = 0, tile_eq = 0;
    Scan(scan).ExclusiveSum(eq, pos, tile_eq);
    if (valid) w.write(i, key > thr || (eq != 0 && rank + pos < need_eq));
    rank += tile_eq;
    __syncthreads();  // scan storage reused by the next tile
  }
}

// One block per row (grid-stride over rows), 0 < k < cols <= kRowKernelMaxCols: all digit
// passes in a shared-memory histogram, then the write. Every element is read by the hist
// passes before any is written (barrier after the last histogram), and in the write each
// element is read and written by the same thread, so in-place writers are safe.
template <typename Keys, typename Writer>
__global__ void __launch_bounds__(kThreads) row_topk_kernel(Keys keys, Writer w, int64_t rows,
                                                             int64_t cols, uint32_t k) {
  using U = typename Keys::U;
  using Scan = cub::BlockScan<uint32_t, kThreads>;
  __shared__ uint32_t bins[kRadixBins];
  __shared__ typename Scan::TempStorage scan;
  __shared__ U s_prefix;
  __shared__ uint32_t s_remaining, s_bin;
  const int passes = radix_passes<U>();
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const Keys rk = keys.row(r, cols);
    const Writer rw = w.row(r, cols);
    U prefix = 0;
    uint32_t remaining = k;  // to take among keys matching `prefix`; 1 <= remaining <= matches
    uint32_t need_eq = 0;
    bool ordered = false;
    for (int pass = 0; pass < passes; ++pass) {
      for (int b = threadIdx.x; b < kRadixBins; b += kThreads) bins[b] = 0;
      __syncthreads();
      const U mask = radix_prefix_mask<U>(pass);
      for (int64_t base = 0; base < cols; base += kTile) {  // uniform: all lanes reach hist_add
        U key[kUnroll];
        bool ok[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t j = base + static_cast<int64_t>(u * kThreads + threadIdx.x);
          ok[u] = j < cols;
          key[u] = ok[u] ? rk.key(j) : U(0);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
          hist_add(bins, ok[u] && (key[u] & mask) == prefix, radix_digit<U>(key[u], pass));
      }
      __syncthreads();
      // Thread t owns bins [top - kBinsPerThread, top), thread 0 the highest; an exclusive
      // scan in thread order counts the matches in higher bins. Exactly one thread holds the
      // bin where the count from the top reaches `remaining`.
      const int top = kRadixBins - static_cast<int>(threadIdx.x) * kBinsPerThread;
      uint32_t sum = 0;
#pragma unroll
      for (int b = 1; b <= kBinsPerThread; ++b) sum += bins[top - b];
      uint32_t above = 0;
      Scan(scan).ExclusiveSum(sum, above);
      if (above < remaining && remaining <= above + sum) {
        uint32_t acc = above;
        for (int d = top - 1; d >= top - kBinsPerThread; --d) {
          const uint32_t c = bins[d];
          if (acc + c >= remaining) {
            s_prefix = static_cast<U>(prefix | digit_bits<U>(static_cast<uint32_t>(d), pass));
            s_remaining = remaining - acc;
            s_bin = c;
            break;
          }
          acc += c;
        }
      }
      __syncthreads();
      // Read by all before the next write of s_*, which comes after two more barriers.
      prefix = s_prefix;
      remaining = s_remaining;
      const uint32_t bin = s_bin;
      if (bin == remaining) break;  // the whole bin is taken: select key >= prefix, no ties
      if (pass + 1 == passes) {
        ordered = true;  // prefix is the full threshold key; take `remaining` of its ties
        need_eq = remaining;
      }
    }
    if (!ordered) {
      for (int64_t j = threadIdx.x; j < cols; j += kThreads) rw.write(j, rk.key(j) >= prefix);
      continue;
    }
    const U thr = prefix;
    uint32_t rank = 0;  // ties before the current tile; uniform over the block, <= cols
    for (int64_t base = 0; base < cols; base += kThreads) {
      const int64_t j = base + threadIdx.x;
      const bool valid = j < cols;
      const U key = valid ? rk.key(j) : U(0);
      if (rank >= need_eq) {
        if (valid) rw.write(j, key > thr);
        continue;
      }
      const uint32_t eq = (valid && key == thr) ? 1u : 0u;
      uint32_t pos = 0, tile_eq = 0;
      Scan(scan).ExclusiveSum(eq, pos, tile_eq);
      if (valid) rw.write(j, key > thr || (eq != 0 && rank + pos < need_eq));
      rank += tile_eq;
      __syncthreads();  // scan storage reused by the next tile
    }
  }
}

// ---- host side --------------------------------------------------------------------------

template <typename U>
struct Cut {
  U threshold;      // select key > threshold, and ties as below
  int64_t beyond;   // keys > threshold (exact only when the select ran all passes)
  int64_t need_eq;  // ties (key == threshold) to select, lowest indices first
  bool all_eq;      // every tie is selected: no ordering needed
};

// Per-op launch context; owns the device counters (kRadixBins bins + 1 NaN counter).
struct Ctx {
  int device;
  cudaStream_t stream;
  at::TensorOptions index_options;
  at::Tensor counters;
  ull* hist() const { return reinterpret_cast<ull*>(counters.data_ptr<int64_t>()); }
  ull* nan_counter() const { return hist() + kRadixBins; }
};

Ctx make_ctx(const at::Tensor& like) {
  const int device = like.get_device();
  const at::TensorOptions opts = like.options().dtype(at::kLong);
  return Ctx{device, c10::cuda::getCurrentCUDAStream(device).stream(), opts,
             at::empty({kRadixBins + 1}, opts)};
}

void raise_on_nan(int64_t nans) {
  TORCH_CHECK_VALUE(nans == 0, "scores contain ", nans, " NaN value(s); top-k needs ordered scores");
}

// Grid of the grid-stride element kernels: enough blocks to fill the GPU, and enough that no
// block sees 2^31 elements (its 32-bit shared histogram counters stay exact).
int flat_grid(int64_t n, int device) {
  const int64_t needed = (n + kTile - 1) / kTile;
  const int64_t cap = static_cast<int64_t>(sm_count(device)) * kBlocksPerSm;
  const int64_t g = std::max({std::min(needed, cap), (n >> 31) + 1, int64_t(1)});
  TORCH_CHECK(g <= INT_MAX, "tensor too large for the top-k kernels: ", n, " elements");
  return static_cast<int>(g);
}

int row_grid(int64_t rows, int device) {
  const int64_t cap = static_cast<int64_t>(sm_count(device)) * kBlocksPerSm;
  return static_cast<int>(std::max<int64_t>(1, std::min(rows, cap)));
}

// Counts NaN over n elements (as rows of `cols`, the row structure of the key source) and
// raises before the caller writes anything.
template <typename Keys>
void check_nan(const Keys& keys, int64_t n, int64_t cols, const Ctx& ctx) {
  ull* counter = ctx.nan_counter();
  C10_CUDA_CHECK(cudaMemsetAsync(counter, 0, sizeof(ull), ctx.stream));
  nan_count_kernel<<<row_grid((n + cols - 1) / cols, ctx.device), kThreads, 0, ctx.stream>>>(
      keys, n, cols, counter);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  ull nans = 0;
  c10::cuda::memcpy_and_sync(&nans, counter, sizeof(ull), cudaMemcpyDeviceToHost, ctx.stream);
  raise_on_nan(static_cast<int64_t>(nans));
}

// Radix select of the k largest keys among n, 1 <= k <= n; raises on NaN after pass 0.
// exact: run every pass so `threshold` is the k-th key itself; otherwise stop as soon as the
// digit's whole bin is taken (threshold = the prefix, all_eq).
template <typename Keys>
Cut<typename Keys::U> radix_select(const Keys& keys, int64_t n, int64_t k, bool exact, const Ctx& ctx) {
  using U = typename Keys::U;
  const int passes = radix_passes<U>();
  const int grid = flat_grid(n, ctx.device);
  std::vector<ull> host(kRadixBins + 1);
  U prefix = 0;
  int64_t remaining = k;
  for (int pass = 0; pass < passes; ++pass) {
    C10_CUDA_CHECK(cudaMemsetAsync(ctx.hist(), 0, sizeof(ull) * (kRadixBins + 1), ctx.stream));
    radix_hist_kernel<<<grid, kThreads, 0, ctx.stream>>>(keys, n, pass, prefix, ctx.hist(),
                                                          ctx.nan_counter());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    c10::cuda::memcpy_and_sync(host.data(), ctx.hist(), sizeof(ull) * (kRadixBins + 1),
                               cudaMemcpyDeviceToHost, ctx.stream);
    if (pass == 0) raise_on_nan(static_cast<int64_t>(host[kRadixBins]));
    int64_t above = 0, bin = -1;
    for (int d = kRadixBins - 1; d >= 0; --d) {
      const int64_t c = static_cast<int64_t>(host[d]);
      if (above + c >= remaining) {
        remaining -= above;
        prefix = static_cast<U>(prefix | digit_bits<U>(static_cast<uint32_t>(d), pass));
        bin = c;
        break;
      }
      above += c;
    }
    TORCH_INTERNAL_ASSERT(bin >= 0, "radix select: k exceeds the candidates");
    const bool last = pass + 1 == passes;
    if (bin == remaining && (last || !exact)) return {prefix, k - remaining, remaining, true};
    if (last) return {prefix, k - remaining, remaining, false};
  }
  TORCH_INTERNAL_ASSERT(false, "radix select: no passes");
  return {};
}

template <typename Writer>
void fill(const Writer& w, int64_t n, bool selected, const Ctx& ctx) {
  if (selected && !w.writes_kept()) return;
  fill_kernel<<<flat_grid(n, ctx.device), kThreads, 0, ctx.stream>>>(w, n, selected);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename Keys, typename Writer>
void write_cut(const Keys& keys, const Writer& w, int64_t n, const Cut<typename Keys::U>& cut,
               const Ctx& ctx) {
  if (cut.all_eq) {
    threshold_write_kernel<<<flat_grid(n, ctx.device), kThreads, 0, ctx.stream>>>(keys, w, n,
                                                                                  cut.threshold, true);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const int64_t tiles = std::max(kMinChunkTiles, (n + kThreads * kMaxChunks - 1) / (kThreads * kMaxChunks));
  const int64_t chunk = tiles * kThreads;
  const int64_t chunks = (n + chunk - 1) / chunk;  // <= kMaxChunks
  at::Tensor counts = at::empty({chunks}, ctx.index_options);
  eq_count_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, ctx.stream>>>(
      keys, n, chunk, cut.threshold, counts.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor inclusive = at::cumsum(counts, 0);
  ordered_write_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, ctx.stream>>>(
      keys, w, n, chunk, cut.threshold, cut.need_eq, counts.data_ptr<int64_t>(),
      inclusive.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Whole tensor: k of n, 0 <= k <= n, n > 0. NaN raises before any write.
template <typename Keys, typename Writer>
void select_whole(const Keys& keys, const Writer& w, int64_t n, int64_t k, const Ctx& ctx) {
  if (k == 0 || k == n) {
    check_nan(keys, n, kNanSpan, ctx);
    fill(w, n, k == n, ctx);
    return;
  }
  write_cut(keys, w, n, radix_select(keys, n, k, /*exact=*/false, ctx), ctx);
}

// k of each row of `cols`, 0 <= k <= cols, rows * cols > 0. nan_cols: the row length the
// NaN count may use (any for sources that ignore rows, cols for WANDA).
template <typename Keys, typename Writer>
void select_rows(const Keys& keys, const Writer& w, int64_t rows, int64_t cols, int64_t k,
                 int64_t nan_cols, const Ctx& ctx) {
  check_nan(keys, rows * cols, nan_cols, ctx);
  if (k == 0 || k == cols) {
    fill(w, rows * cols, k == cols, ctx);
    return;
  }
  if (cols > kRowKernelMaxCols || (cols >= kWideRow && rows < sm_count(ctx.device))) {
    for (int64_t r = 0; r < rows; ++r) {
      const Keys rk = keys.row(r, cols);
      write_cut(rk, w.row(r, cols), cols, radix_select(rk, cols, k, /*exact=*/false, ctx), ctx);
    }
    return;
  }
  row_topk_kernel<<<row_grid(rows, ctx.device), kThreads, 0, ctx.stream>>>(
      keys, w, rows, cols, static_cast<uint32_t>(k));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- ops --------------------------------------------------------------------------------

void check_scores(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  check_values_tensor(t, name);
}

template <typename scalar_t>
PruneWriter<scalar_t> prune_writer(scalar_t* x, std::optional<acc_of<scalar_t>> inv) {
  return PruneWriter<scalar_t>{x, inv.value_or(acc_of<scalar_t>(1)), inv.has_value()};
}

at::Tensor topk_mask_cuda(const at::Tensor& scores, int64_t k, bool largest, bool per_row) {
  check_scores(scores, "scores");
  const auto [rows, cols] = slice_shape(scores, per_row);
  check_k(k, cols, "k");
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor x = scores.contiguous();
  at::Tensor mask = at::empty(scores.sizes(), scores.options().dtype(at::kBool));
  const int64_t n = x.numel();
  if (n == 0) return mask;
  const Ctx ctx = make_ctx(x);
  const MaskWriter w{mask.data_ptr<bool>()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_topk_mask_cuda", [&] {
    using U = typename Bits<scalar_t>::U;
    const ScoreKeys<U> keys{reinterpret_cast<const U*>(x.data_ptr<scalar_t>()), Bits<scalar_t>::kExp, largest};
    if (per_row) {
      select_rows(keys, w, rows, cols, k, kNanSpan, ctx);
    } else {
      select_whole(keys, w, n, k, ctx);
    }
  });
  return mask;
}

at::Tensor topk_threshold_cuda(const at::Tensor& scores, int64_t k, bool largest) {
  check_scores(scores, "scores");
  TORCH_CHECK_VALUE(k >= 1 && k <= scores.numel(), "k must be in [1, ", scores.numel(), "], got ", k);
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor x = scores.contiguous();
  const Ctx ctx = make_ctx(x);
  at::Tensor result = at::empty({3}, at::TensorOptions().dtype(at::kDouble));
  double* r = result.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "darex_topk_threshold_cuda", [&] {
    using U = typename Bits<scalar_t>::U;
    const ScoreKeys<U> keys{reinterpret_cast<const U*>(x.data_ptr<scalar_t>()), Bits<scalar_t>::kExp, largest};
    const Cut<U> cut = radix_select(keys, x.numel(), k, /*exact=*/true, ctx);
    // Invert radix_key: the bits of the threshold score (-0.0 comes back as +0.0).
    const U key = largest ? cut.threshold : static_cast<U>(~cut.threshold);
    const U bits = (key & RadixTraits<U>::kSign) ? static_cast<U>(key & static_cast<U>(~RadixTraits<U>::kSign))
                                                 : static_cast<U>(~key);
    scalar_t value;
    static_assert(sizeof(value) == sizeof(bits));
    std::memcpy(&value, &bits, sizeof(bits));
    r[0] = static_cast<double>(value);
    r[1] = static_cast<double>(cut.beyond);
    r[2] = static_cast<double>(cut.need_eq);
  });
  return result.to(scores.device());
}

void magnitude_prune_cuda(at::Tensor& delta, int64_t keep, bool per_row, std::optional<double> q) {
  check_scores(delta, "delta");
  const auto [rows, cols] = slice_shape(delta, per_row);
  check_k(keep, cols, "keep");
  const c10::cuda::CUDAGuard guard(delta.device());
  at::Tensor work = delta.is_contiguous() ? delta : delta.contiguous();
  const int64_t n = work.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_magnitude_prune_cuda", [&] {
    using U = typename Bits<scalar_t>::U;
    const auto inv = inverse_of<acc_of<scalar_t>>(q);
    if (n == 0) return;
    const Ctx ctx = make_ctx(work);
    scalar_t* x = work.data_ptr<scalar_t>();
    const AbsKeys<U> keys{reinterpret_cast<const U*>(x), Bits<scalar_t>::kExp};
    const PruneWriter<scalar_t> w = prune_writer<scalar_t>(x, inv);
    if (per_row) {
      select_rows(keys, w, rows, cols, keep, kNanSpan, ctx);
    } else {
      select_whole(keys, w, n, keep, ctx);
    }
  });
  if (!work.is_same(delta)) delta.copy_(work);
}

void wanda_prune_cuda(at::Tensor& delta, const at::Tensor& act_norm, int64_t keep, std::optional<double> q) {
  check_scores(delta, "delta");
  check_wanda_args(delta, act_norm, keep);
  const int64_t rows = delta.size(0), cols = delta.size(1);
  const c10::cuda::CUDAGuard guard(delta.device());
  at::Tensor work = delta.is_contiguous() ? delta : delta.contiguous();
  const at::Tensor a = act_norm.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "darex_wanda_prune_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    const auto inv = inverse_of<acc_t>(q);
    if (rows == 0 || cols == 0) return;
    const Ctx ctx = make_ctx(work);
    scalar_t* x = work.data_ptr<scalar_t>();
    const WandaKeys<scalar_t> keys{x, a.data_ptr<acc_t>()};
    select_rows(keys, prune_writer<scalar_t>(x, inv), rows, cols, keep, cols, ctx);
  });
  if (!work.is_same(delta)) delta.copy_(work);
}

}  // namespace

TORCH_LIBRARY_IMPL(darex, CUDA, m) {
  m.impl("topk_mask", &topk_mask_cuda);
  m.impl("topk_threshold", &topk_threshold_cuda);
  m.impl("magnitude_prune_", &magnitude_prune_cuda);
  m.impl("wanda_prune_", &wanda_prune_cuda);
}

}  // namespace darex::cuda
