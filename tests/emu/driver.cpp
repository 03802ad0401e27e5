/*
 * CPU driver for kernels/bk_recursion.cuh (see shim.h). Reads a launch from argv[1]:
 *   bk_solve_params_t (pointer fields hold arena offset + 1, 0 = null), u32 grid, u64 arena
 *   length, arena bytes;
 * relocates the pointers into the arena, runs the kernel picked by the params' formats and compute
 * type over `grid` blocks of `threads` threads, and writes the arena back to argv[2].
 */
#include "shim.h"
#include "bk_recursion.cuh"
#include <cstdio>
#include <cstdlib>
#include <thread>

static void reloc(uint64_t &p, uint8_t *base)
{
    if (p) p = (uint64_t)(uintptr_t)(base + (p - 1));
}

template <class T, class S, class Load, class Store, int CHUNK>
static void launch(const bk_solve_params_t &p, unsigned grid)
{
    unsigned nt = p.threads;
    blockDim.x = nt;
    gridDim.x = grid;
    for (unsigned b = 0; b < grid; b++) {
        EmuBlock blk;
        blk.block = std::make_unique<std::barrier<>>(nt);
        for (unsigned w = 0; w < (nt + 31) / 32; w++) blk.warp.push_back(std::make_unique<std::barrier<>>(32));
        blk.slot.assign(nt, 0);
        blk.smem.assign(p.stage_in_shared ? p.n : 1, 0);
        emu = &blk;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < nt; t++)
            ts.emplace_back([&, t, b] {
                threadIdx.x = t;
                blockIdx.x = b;
                bk::solve_rows<T, S, Load, Store, CHUNK>(p);
            });
        for (auto &t : ts) t.join();
    }
}

template <class Load> static bool by_output(const bk_solve_params_t &p, unsigned grid)
{
    bool f64 = p.compute == BK_FMT_F64;
#define BK_EMU_OUT(FMT, STORE)                                                                     \
    if (p.out_format == FMT) {                                                                     \
        if (f64) launch<double, double, Load, STORE, BK_CHUNK_F64>(p, grid);                       \
        else if (p.scan64) launch<float, double, Load, STORE, BK_CHUNK_F32>(p, grid);              \
        else launch<float, float, Load, STORE, BK_CHUNK_F32>(p, grid);                             \
        return true;                                                                               \
    }
    BK_EMU_OUT(BK_FMT_C64, bk::StoreC64)
    BK_EMU_OUT(BK_FMT_C128, bk::StoreC128)
    BK_EMU_OUT(BK_FMT_INT8, bk::StoreQ<BK_FMT_INT8>)
    BK_EMU_OUT(BK_FMT_INT4, bk::StoreQ<BK_FMT_INT4>)
    return false;
}

int main(int argc, char **argv)
{
    if (argc != 3) return 2;
    FILE *f = fopen(argv[1], "rb");
    if (!f) return 3;
    bk_solve_params_t p;
    uint32_t grid;
    uint64_t len;
    if (fread(&p, sizeof p, 1, f) != 1 || fread(&grid, 4, 1, f) != 1 || fread(&len, 8, 1, f) != 1) return 4;
    uint8_t *arena = (uint8_t *)std::aligned_alloc(256, (len + 255) / 256 * 256 + 256);
    if (len && fread(arena, 1, len, f) != len) return 5;
    fclose(f);
    for (uint64_t *q : {&p.v, &p.c, &p.c_lo, &p.k, &p.g, &p.status, &p.row_index, &p.ain, &p.stage, &p.v_q.codes,
                        &p.v_q.scale, &p.v_q.zero, &p.g_re.codes, &p.g_re.scale, &p.g_re.zero, &p.g_im.codes,
                        &p.g_im.scale, &p.g_im.zero})
        reloc(*q, arena);
    bool ok = false;
    switch (p.in_format) {
    case BK_FMT_F32: ok = by_output<bk::LoadF32>(p, grid); break;
    case BK_FMT_F64: ok = by_output<bk::LoadF64>(p, grid); break;
    case BK_FMT_INT8: ok = by_output<bk::LoadQ<BK_FMT_INT8>>(p, grid); break;
    case BK_FMT_INT4: ok = by_output<bk::LoadQ<BK_FMT_INT4>>(p, grid); break;
    }
    if (!ok) return 6;
    f = fopen(argv[2], "wb");
    if (!f || fwrite(arena, 1, len, f) != len) return 7;
    fclose(f);
    return 0;
}
