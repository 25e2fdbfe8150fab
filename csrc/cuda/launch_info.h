// CUDA launch policy, reported by darex_ext._C.cuda_launch_config() for introspection.
#pragma once

namespace darex {

struct LaunchInfo {
  int threads_per_block;
  int blocks_per_sm;
  int elements_per_thread;
};

#ifdef DAREX_WITH_CUDA
LaunchInfo cuda_launch_info();  // launch.cu
#endif

}  // namespace darex
