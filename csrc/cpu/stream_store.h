// Writes that bypass the cache (non-temporal stores) for the kept-only paths of mask spec v2:
// at p = 0.99 `prune_` and a seeded decode write zeros over 99% of the tensor. A plain store to
// a line not in cache first reads that line from memory (read for ownership), so a plain
// zero-fill moves twice the bytes it writes; streaming whole lines moves only the bytes written.
//
// Lines are staged in an L1-resident buffer and streamed out whole; partial lines at either end
// of a range get plain stores, so two threads never stream into the same line. Streaming stores
// are weakly ordered: every task that streams calls stream_fence() before it ends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>  // SSE2: part of every x86-64 CPU, so no dispatch is needed
#define DAREX_STREAM_STORES 1
#endif

namespace darex::cpu {

constexpr size_t kLineBytes = 64;

// dst[0, bytes) = src[0, bytes); the whole 64-byte lines of dst are written with streaming
// stores. src should be in cache (it is read at cache speed).
inline void stream_copy(void* dst, const void* src, size_t bytes) {
#if defined(DAREX_STREAM_STORES)
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  const size_t head = (kLineBytes - (reinterpret_cast<uintptr_t>(d) & (kLineBytes - 1))) & (kLineBytes - 1);
  if (head >= bytes) {
    std::memcpy(d, s, bytes);
    return;
  }
  std::memcpy(d, s, head);
  d += head;
  s += head;
  bytes -= head;
  const size_t lines = bytes / kLineBytes;
  for (size_t l = 0; l < lines; ++l) {
    auto* out = reinterpret_cast<__m128i*>(d + l * kLineBytes);
    const auto* in = reinterpret_cast<const __m128i*>(s + l * kLineBytes);
    _mm_stream_si128(out + 0, _mm_loadu_si128(in + 0));
    _mm_stream_si128(out + 1, _mm_loadu_si128(in + 1));
    _mm_stream_si128(out + 2, _mm_loadu_si128(in + 2));
    _mm_stream_si128(out + 3, _mm_loadu_si128(in + 3));
  }
  std::memcpy(d + lines * kLineBytes, s + lines * kLineBytes, bytes - lines * kLineBytes);
#else
  std::memcpy(dst, src, bytes);
#endif
}

// Is streaming the zeros of a keep-rare write worth it? Streaming saves the read of every line
// that holds no kept element but makes the kept elements' lines scattered reads of their own;
// when more than a fifth of the lines hold a kept element (bf16 / fp16 at p = 0.99: 27.5%), a
// plain fill, whose read of every line runs in order, measured faster on the AMD EPYC VM.
inline bool streaming_pays(double keep, size_t element_bytes) {
  const double per_line = static_cast<double>(kLineBytes / element_bytes);
  double none = 1.0;  // (1 - keep)^per_line: a line holds no kept element
  for (int i = 0; i < static_cast<int>(per_line); ++i) none *= 1.0 - keep;
  return 1.0 - none < 0.2;
}

// Orders this thread's streaming stores before anything it stores after (and before the end
// of a parallel task, which other threads then observe).
inline void stream_fence() {
#if defined(DAREX_STREAM_STORES)
  _mm_sfence();
#endif
}

// An L1-resident stripe of values, all +0.0 between uses: set the kept values, stream it out,
// clear the kept values again. One per parallel task (its destructor fences the task's stores).
template <typename scalar_t, int32_t kCapacity>
struct StreamStage {
  alignas(64) scalar_t buf[kCapacity];

  StreamStage() { std::memset(static_cast<void*>(buf), 0, sizeof(buf)); }  // +0.0 in every dtype
  ~StreamStage() { stream_fence(); }
  StreamStage(const StreamStage&) = delete;
  StreamStage& operator=(const StreamStage&) = delete;

  // dst[0, count) = buf[0, count), then buf[at[j]] = +0.0 for j < k (the entries that were set).
  // (Streaming only the lines without a set entry, and plain stores into the others, measured
  // slower on the AMD EPYC VM: mixing the two kinds of store in one region costs more than the
  // reads it saves.)
  template <typename index_t>
  void flush(scalar_t* dst, int32_t count, const index_t* at, int32_t k) {
    stream_copy(dst, buf, sizeof(scalar_t) * static_cast<size_t>(count));
    for (int32_t j = 0; j < k; ++j) std::memset(static_cast<void*>(buf + at[j]), 0, sizeof(scalar_t));
  }
};

}  // namespace darex::cpu
