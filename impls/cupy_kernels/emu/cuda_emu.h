// A minimal CPU emulator of the CUDA features the kernels in ../*.cu use, so that the
// tests can run the real kernel source on a machine without a GPU: every block runs as
// blockDim OS threads with a real barrier for __syncthreads and a per-warp exchange for
// __shfl_down_sync; __shared__ becomes a function-local static (blocks run one at a
// time). Slow and only for small shapes; it checks index arithmetic, not speed.
#pragma once
#include <barrier>
#include <memory>
#include <thread>
#include <utility>
#include <vector>
#include <type_traits>

#define CUDA_EMU 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct emu_dim3 { unsigned x, y, z; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };

inline thread_local emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

struct EmuWarp {
    std::barrier<> bar{32};
    double buf[32];
};
inline thread_local std::barrier<>* emu_block_barrier = nullptr;
inline thread_local EmuWarp* emu_warp = nullptr;
inline thread_local int emu_lane = 0;

template <class T> inline T __ldg(const T* p) { return *p; }
inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

template <class T> inline T __shfl_down_sync(unsigned, T v, int off)
{
    emu_warp->buf[emu_lane] = (double)v;
    emu_warp->bar.arrive_and_wait();
    T r = (emu_lane + off < 32) ? (T)emu_warp->buf[emu_lane + off] : v;
    emu_warp->bar.arrive_and_wait();
    return r;
}

template <class... Args, std::size_t... I>
inline void emu_call(void (*f)(Args...), void** args, std::index_sequence<I...>)
{
    f(*reinterpret_cast<std::remove_cv_t<std::remove_reference_t<Args>>*>(args[I])...);
}

template <class... Args>
inline void emu_launch(void (*f)(Args...), emu_dim3 grid, emu_dim3 block, void** args)
{
    const unsigned nt = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> bar(nt);
                std::vector<std::unique_ptr<EmuWarp>> warps;
                for (unsigned w = 0; w < (nt + 31) / 32; ++w) warps.emplace_back(new EmuWarp());
                std::vector<std::thread> ts;
                ts.reserve(nt);
                for (unsigned t = 0; t < nt; ++t)
                    ts.emplace_back([&, t] {
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        blockIdx = {bx, by, bz};
                        blockDim = block;
                        gridDim = grid;
                        emu_block_barrier = &bar;
                        emu_warp = warps[t / 32].get();
                        emu_lane = (int)(t % 32);
                        emu_call(f, args, std::index_sequence_for<Args...>{});
                        emu_warp->bar.arrive_and_drop();
                        bar.arrive_and_drop();
                    });
                for (auto& th : ts) th.join();
            }
}
