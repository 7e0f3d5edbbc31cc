// CPU emulation library of ../depthwise.cu and ../lateral_gemm.cu for the tests:
//   int emu_launch_by_name(const char* name, grid xyz, block xyz, void** args)
// returns 0, or 1 when no instantiation of that name is compiled in.
#include "cuda_emu.h"
#include <functional>
#include <map>
#include <string>

#include "../depthwise.cu"
#include "../lateral_gemm.cu"

typedef std::function<void(emu_dim3, emu_dim3, void**)> EmuFn;
static std::map<std::string, EmuFn>& table()
{
    static std::map<std::string, EmuFn> t;
    return t;
}

template <class T, int K, int TW>
static void reg_dw(const char* tn)
{
    const std::string s = std::string("<") + tn + ", " + std::to_string(K) + ", " + std::to_string(TW) + ", " +
                          std::to_string(TW) + ">";
    table()["dw_v_fwd" + s] = [](emu_dim3 g, emu_dim3 b, void** a) { emu_launch(&dw_v_fwd<T, K, TW, TW>, g, b, a); };
    table()["dw_h_fwd" + s] = [](emu_dim3 g, emu_dim3 b, void** a) { emu_launch(&dw_h_fwd<T, K, TW, TW>, g, b, a); };
    table()["dw_vh_fwd" + s] = [](emu_dim3 g, emu_dim3 b, void** a) { emu_launch(&dw_vh_fwd<T, K, TW, TW>, g, b, a); };
    table()["dw_h_bwd" + s] = [](emu_dim3 g, emu_dim3 b, void** a) { emu_launch(&dw_h_bwd<T, K, TW, TW>, g, b, a); };
    table()["dw_v_bwd" + s] = [](emu_dim3 g, emu_dim3 b, void** a) { emu_launch(&dw_v_bwd<T, K, TW, TW>, g, b, a); };
}

template <class T, int K>
static void reg_k(const char* tn)
{
    reg_dw<T, K, 16>(tn);
    reg_dw<T, K, 32>(tn);
}

template <class T>
static void reg_type(const char* tn)
{
    reg_k<T, 1>(tn); reg_k<T, 2>(tn); reg_k<T, 3>(tn); reg_k<T, 4>(tn); reg_k<T, 5>(tn); reg_k<T, 7>(tn);
    const std::string t(tn);
    table()["dw_reduce_partials<" + t + ">"] = [](emu_dim3 g, emu_dim3 b, void** a) { emu_launch(&dw_reduce_partials<T>, g, b, a); };
    table()["gemm_sum_splits<" + t + ">"] = [](emu_dim3 g, emu_dim3 b, void** a) { emu_launch(&gemm_sum_splits<T>, g, b, a); };
    table()["gemm_tiled<" + t + ", true, false>"] = [](emu_dim3 g, emu_dim3 b, void** a) { emu_launch(&gemm_tiled<T, true, false>, g, b, a); };
    table()["gemm_tiled<" + t + ", false, false>"] = [](emu_dim3 g, emu_dim3 b, void** a) { emu_launch(&gemm_tiled<T, false, false>, g, b, a); };
    table()["gemm_tiled<" + t + ", true, true>"] = [](emu_dim3 g, emu_dim3 b, void** a) { emu_launch(&gemm_tiled<T, true, true>, g, b, a); };
}

extern "C" int emu_launch_by_name(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                  unsigned bz, void** args)
{
    if (table().empty()) {
        reg_type<float>("float");
        reg_type<double>("double");
    }
    auto it = table().find(name);
    if (it == table().end()) return 1;
    it->second({gx, gy, gz}, {bx, by, bz}, args);
    return 0;
}
