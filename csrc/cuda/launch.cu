#include <c10/cuda/CUDAException.h>

#include <mutex>
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

}  // namespace darex::cuda

namespace darex {

LaunchInfo cuda_launch_info() {
  return LaunchInfo{cuda::kThreads, cuda::kBlocksPerSm, cuda::kElemsPerThread};
}

}  // namespace darex
