/*
 * CPU driver for kernels/bk_vjp.cuh (see shim.h), for tests/vjp_emu.rs. Reads a launch from
 * argv[1]:
 *   u32 kind (0: bk_vjp / bk_vjp_f64 by the params' compute type, 1: bk_vjp_reduce),
 *   the params struct (pointer fields hold arena offset + 1, 0 = null), u32 grid.x, u32 grid.y,
 *   u32 block, u64 arena length, arena bytes;
 * relocates the pointers into the arena, runs the kernel over the grid (blocks one after
 * another, one std::thread per CUDA thread) and writes the arena back to argv[2].
 */
#include "shim.h"
#include "bk_vjp.cuh"
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>

static void reloc(uint64_t &p, uint8_t *base)
{
    if (p) p = (uint64_t)(uintptr_t)(base + (p - 1));
}

static void run_grid(unsigned gx, unsigned gy, unsigned nt, const std::function<void()> &body)
{
    blockDim.x = nt;
    gridDim.x = gx;
    gridDim.y = gy;
    for (unsigned by = 0; by < gy; by++)
        for (unsigned bx = 0; bx < gx; bx++) {
            EmuBlock blk;
            blk.block = std::make_unique<std::barrier<>>(nt);
            for (unsigned w = 0; w < (nt + 31) / 32; w++) blk.warp.push_back(std::make_unique<std::barrier<>>(32));
            blk.slot.assign(nt, 0);
            blk.smem.assign(1, 0);
            emu = &blk;
            std::vector<std::thread> ts;
            for (unsigned t = 0; t < nt; t++)
                ts.emplace_back([&, t, bx, by] {
                    threadIdx.x = t;
                    blockIdx.x = bx;
                    blockIdx.y = by;
                    body();
                });
            for (auto &t : ts) t.join();
        }
}

template <class P> static uint8_t *read_launch(FILE *f, P &p, uint32_t &gx, uint32_t &gy, uint32_t &nt, uint64_t &len)
{
    if (fread(&p, sizeof p, 1, f) != 1 || fread(&gx, 4, 1, f) != 1 || fread(&gy, 4, 1, f) != 1 || fread(&nt, 4, 1, f) != 1
        || fread(&len, 8, 1, f) != 1)
        return nullptr;
    uint8_t *arena = (uint8_t *)std::aligned_alloc(256, (len + 255) / 256 * 256 + 256);
    if (len && fread(arena, 1, len, f) != len) return nullptr;
    return arena;
}

int main(int argc, char **argv)
{
    if (argc != 3) return 2;
    FILE *f = fopen(argv[1], "rb");
    if (!f) return 3;
    uint32_t kind, gx, gy, nt;
    uint64_t len;
    uint8_t *arena = nullptr;
    if (fread(&kind, 4, 1, f) != 1) return 4;
    if (kind == 0) {
        bk_vjp_params_t p;
        if (!(arena = read_launch(f, p, gx, gy, nt, len))) return 4;
        for (uint64_t *q : {&p.v, &p.g_bar, &p.c, &p.c_lo, &p.k, &p.dv_row, &p.dk_row, &p.dz_row, &p.status, &p.row_index,
                            &p.scratch, &p.v_q.codes, &p.v_q.scale, &p.v_q.zero})
            reloc(*q, arena);
        if (p.compute == BK_FMT_F64) run_grid(gx, gy, nt, [&] { bkv::vjp_rows<double>(p); });
        else run_grid(gx, gy, nt, [&] { bkv::vjp_rows<float>(p); });
    } else if (kind == 1) {
        bk_vjp_reduce_params_t p;
        if (!(arena = read_launch(f, p, gx, gy, nt, len))) return 4;
        for (uint64_t *q : {&p.dv_row, &p.dk_row, &p.dv, &p.part}) reloc(*q, arena);
        run_grid(gx, gy, nt, [&] { bkv::reduce(p); });
    } else {
        return 6;
    }
    fclose(f);
    f = fopen(argv[2], "wb");
    if (!f || fwrite(arena, 1, len, f) != len) return 7;
    fclose(f);
    return 0;
}
