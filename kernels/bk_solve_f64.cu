/* Solve kernels reading f64 potentials: every output format, f32 and f64 compute. */
#include "bk_recursion.cuh"

BK_SOLVE_KERNELS_FOR_INPUT(f64, bk::LoadF64)
