// Portability macros shared by host and device code. Framework-free: no torch headers.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DAREX_HD __host__ __device__
#define DAREX_HD_INLINE __host__ __device__ __forceinline__
#else
#define DAREX_HD
#define DAREX_HD_INLINE inline
#endif
