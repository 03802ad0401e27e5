/*
 * Runs kernels/bk_recursion.cuh on the CPU for tests/kernel_emu.rs: one std::thread per CUDA
 * thread of a block, std::barrier for __syncthreads and for warp shuffles (every shuffle in the
 * kernels is executed by whole, converged warps), blocks one after another. Explicitly rounded
 * intrinsics become plain IEEE operations (compiled with -ffp-contract=off). This checks the
 * kernel logic (indices, scans, stores, flags), not GPU memory semantics or timing.
 */
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

using std::fabs;
using std::fmax;
using std::isfinite;

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __grid_constant__
#define __shared__ static

struct dim3 { unsigned x = 0, y = 1, z = 1; };
struct float2 { float x, y; };
struct double2 { double x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline double2 make_double2(double x, double y) { return {x, y}; }

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __double2float_rn(double x) { return (float)x; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline long long __double_as_longlong(double x) { long long i; std::memcpy(&i, &x, 8); return i; }
inline double __longlong_as_double(long long i) { double x; std::memcpy(&x, &i, 8); return x; }
template <class T> inline T __ldg(const T *p) { return *p; }

/* Block-wide state of the emulator. */
struct EmuBlock {
    std::unique_ptr<std::barrier<>> block;
    std::vector<std::unique_ptr<std::barrier<>>> warp;
    std::vector<uint64_t> slot; /* one shuffle slot per thread */
    std::atomic<int> orflag{0};
    std::vector<uint64_t> smem; /* dynamic shared memory */
};
inline EmuBlock *emu;

#define BK_DYNAMIC_SHARED(type, name) type *name = (type *)emu->smem.data()

inline void __syncthreads() { emu->block->arrive_and_wait(); }
inline int __syncthreads_or(int pred)
{
    emu->block->arrive_and_wait();
    if (pred) emu->orflag.store(1);
    emu->block->arrive_and_wait();
    int r = emu->orflag.load();
    emu->block->arrive_and_wait();
    if (threadIdx.x == 0) emu->orflag.store(0);
    emu->block->arrive_and_wait();
    return r;
}

template <class T> inline T emu_shfl(T x, int src_lane_delta, int mode, unsigned arg)
{
    unsigned tid = threadIdx.x, lane = tid & 31u, base = tid - lane;
    uint64_t bits = 0;
    std::memcpy(&bits, &x, sizeof(T));
    emu->slot[tid] = bits;
    emu->warp[tid >> 5]->arrive_and_wait();
    unsigned src = lane;
    if (mode == 0 && lane >= arg) src = lane - arg;        /* up */
    if (mode == 1 && lane + arg < 32) src = lane + arg;    /* down */
    if (mode == 2) src = lane ^ arg;                       /* xor */
    uint64_t got = emu->slot[base + src];
    emu->warp[tid >> 5]->arrive_and_wait();
    T r;
    std::memcpy(&r, &got, sizeof(T));
    (void)src_lane_delta;
    return r;
}
template <class T> inline T __shfl_up_sync(unsigned, T x, unsigned off) { return emu_shfl(x, 0, 0, off); }
template <class T> inline T __shfl_down_sync(unsigned, T x, unsigned off) { return emu_shfl(x, 0, 1, off); }
template <class T> inline T __shfl_xor_sync(unsigned, T x, unsigned m) { return emu_shfl(x, 0, 2, m); }
