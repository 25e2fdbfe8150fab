// The darex_ext._C Python module: build facts and kernel introspection. Tensor ops are not
// bound here; they are registered with the dispatcher (torch.ops.darex.*) by the op files.
#include <torch/extension.h>

#include "cpu/philox_fill.h"
#include "cuda/launch_info.h"

#ifndef DAREX_VERSION
#define DAREX_VERSION "0.0.0"
#endif
#ifndef DAREX_TORCH_VERSION
#define DAREX_TORCH_VERSION "unknown"
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "darex_ext native kernels (ops live in torch.ops.darex)";
  m.def("cuda_built", []() {
#ifdef DAREX_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True if the extension was compiled with its CUDA kernels.");
  m.def("build_info", []() {
    pybind11::dict info;
    info["version"] = DAREX_VERSION;
    info["torch_version"] = DAREX_TORCH_VERSION;
#ifdef DAREX_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cpu_isa"] = darex::cpu::philox_fill_isa();
    return info;
  }, "Versions and features the extension was built with.");
  m.def("cpu_isa", &darex::cpu::philox_fill_isa, "Philox implementation used on this CPU.");
#ifdef DAREX_WITH_CUDA
  m.def("cuda_launch_config", []() {
    const darex::LaunchInfo info = darex::cuda_launch_info();
    pybind11::dict d;
    d["threads_per_block"] = info.threads_per_block;
    d["blocks_per_sm"] = info.blocks_per_sm;
    d["elements_per_thread"] = info.elements_per_thread;
    return d;
  }, "Block size and grid policy of the CUDA kernels.");
#endif
}
