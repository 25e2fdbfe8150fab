// CUDA launch policy, reported by darex_ext._C.cuda_launch_config() for introspection.
#pragma once

#include <string>
#include <vector>

namespace darex {

struct LaunchInfo {
  int threads_per_block;
  int blocks_per_sm;  // upper bound; each kernel's grid uses its own occupancy below it
  int elements_per_thread;
};

// One kernel's measured launch shape on one device, recorded when a grid is first sized for it.
struct KernelOccupancy {
  std::string kernel;  // demangled name when the runtime can tell it
  int device;
  int threads_per_block;
  int registers_per_thread;
  int static_smem_bytes;
  int blocks_per_sm;  // resident blocks per SM (cudaOccupancyMaxActiveBlocksPerMultiprocessor)
  int sm_count;
};

#ifdef DAREX_WITH_CUDA
LaunchInfo cuda_launch_info();                       // launch.cu
std::vector<KernelOccupancy> cuda_kernel_occupancy();  // launch.cu: kernels sized so far
#endif

}  // namespace darex
