#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "launch.cuh"
#include "launch_info.h"

namespace darex::cuda {

int sm_count(int device) {
  // Cached per device: the attribute query is cheap but not free on every launch.
  static std::mutex mu;
  static std::vector<int> cache;
  std::lock_guard<std::mutex> lock(mu);
  if (device >= static_cast<int>(cache.size())) cache.resize(device + 1, 0);
  if (cache[device] == 0) {
    int sms = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cache[device] = sms > 0 ? sms : 1;
  }
  return cache[device];
}

namespace {

using OccupancyKey = std::tuple<const void*, int, int, size_t>;  // kernel, device, threads, smem

struct OccupancyCache {
  std::mutex mu;
  std::map<OccupancyKey, KernelOccupancy> entries;
};

OccupancyCache& occupancy_cache() {
  static OccupancyCache* cache = new OccupancyCache();  // leaked: no destruction-order issue at exit
  return *cache;
}

std::string kernel_name(const void* kernel) {
#if CUDART_VERSION >= 12030
  const char* mangled = nullptr;
  if (cudaFuncGetName(&mangled, kernel) == cudaSuccess && mangled != nullptr) {
    int status = 0;
    char* demangled = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
    std::string name = status == 0 && demangled != nullptr ? demangled : mangled;
    std::free(demangled);
    return name;
  }
  (void)cudaGetLastError();  // a failed name lookup must not surface at the next launch check
#endif
  (void)kernel;
  return "?";
}

KernelOccupancy measure(const void* kernel, int device, int threads, size_t dynamic_smem) {
  // The occupancy and attribute queries read the current device's image of the kernel.
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, dynamic_smem));
  // 0 means the block cannot launch at all; keep 1 so the launch itself reports why.
  blocks = std::clamp(blocks, 1, kBlocksPerSm);
  return KernelOccupancy{kernel_name(kernel), device, threads, attr.numRegs,
                         static_cast<int>(attr.sharedSizeBytes), blocks, sm_count(device)};
}

}  // namespace

int max_active_blocks(const void* kernel, int device, int threads, size_t dynamic_smem) {
  OccupancyCache& cache = occupancy_cache();
  const OccupancyKey key{kernel, device, threads, dynamic_smem};
  {
    std::lock_guard<std::mutex> lock(cache.mu);
    const auto it = cache.entries.find(key);
    if (it != cache.entries.end()) return it->second.blocks_per_sm;
  }
  // Measured outside the lock (two threads may both measure once; they agree).
  KernelOccupancy entry = measure(kernel, device, threads, dynamic_smem);
  const int blocks = entry.blocks_per_sm;
  std::lock_guard<std::mutex> lock(cache.mu);
  cache.entries.emplace(key, std::move(entry));
  return blocks;
}

}  // namespace darex::cuda

namespace darex {

LaunchInfo cuda_launch_info() {
  return LaunchInfo{cuda::kThreads, cuda::kBlocksPerSm, cuda::kElemsPerThread};
}

std::vector<KernelOccupancy> cuda_kernel_occupancy() {
  cuda::OccupancyCache& cache = cuda::occupancy_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  std::vector<KernelOccupancy> out;
  out.reserve(cache.entries.size());
  for (const auto& kv : cache.entries) out.push_back(kv.second);
  std::sort(out.begin(), out.end(), [](const KernelOccupancy& a, const KernelOccupancy& b) {
    return std::tie(a.kernel, a.device, a.threads_per_block) < std::tie(b.kernel, b.device, b.threads_per_block);
  });
  return out;
}

}  // namespace darex
