/* Solve kernels reading int8 potentials: every output format, f32 and f64 compute. */
#include "bk_recursion.cuh"

BK_SOLVE_KERNELS_FOR_INPUT(int8, bk::LoadQ<BK_FMT_INT8>)
