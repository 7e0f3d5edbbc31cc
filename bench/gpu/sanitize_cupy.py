"""Small forward + forward_train + backward of `cupy` and `cupy_fused` against the float64
oracle, meant to run under `compute-sanitizer --tool memcheck python bench/gpu/sanitize_cupy.py`
(and racecheck / synccheck if wanted). Shapes are small but cover several tiles per plane
with partial last tiles, the scalar and the 16-byte load paths, every padding, even k,
float32 and float64. Exits non-zero on any mismatch; prints one line per case.
"""

from __future__ import annotations

import sys

import torch

import impls
from impls.verify import check, tolerance

CASES = [  # (B, C, N, H, W, k, padding)
    (2, 5, 7, 37, 40, 3, 1),
    (1, 3, 4, 9, 11, 4, 0),
    (1, 3, 4, 9, 11, 4, 3),
    (2, 130, 129, 6, 8, 5, 2),
]


def main() -> int:
    failed = 0
    for name in ("cupy", "cupy_fused"):
        impl = impls.get(name)
        reason = impl.unavailable_reason("cuda")
        if reason is not None:
            print(f"SKIP {name}: {reason}")
            return 2
        for dtype in (torch.float32, torch.float64):
            for b, c, n, h, w, k, p in CASES:
                gen = torch.Generator().manual_seed(0)
                prm = impls.FlatParams.random(c, n, k, device="cuda", dtype=dtype, seed=1)
                x = torch.randn(b, c, h, w, generator=gen, dtype=dtype).cuda()
                gy = torch.randn(b, n, h + 2 * p - k + 1, w + 2 * p - k + 1, generator=gen, dtype=dtype).cuda()
                errors = check(impl, x, prm, p, gy)
                torch.cuda.synchronize()
                worst = max(errors.values())
                ok = worst <= tolerance(dtype)
                failed += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {name} {dtype} B{b} C{c} N{n} H{h} W{w} k{k} p{p} max_err={worst:.2e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
