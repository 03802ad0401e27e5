/* Backward-pass (VJP) kernels: f32 and f64 compute, every input format (a launch parameter), and
 * the deterministic reduction over rows. */
#include "bk_vjp.cuh"

BK_VJP_KERNEL(bk_vjp, float)
BK_VJP_KERNEL(bk_vjp_f64, double)
BK_VJP_REDUCE_KERNEL(bk_vjp_reduce)
