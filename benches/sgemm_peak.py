#!/usr/bin/env python3
"""The machine's float32 matrix-product peak, through NumPy's BLAS (OpenBLAS in the wheels).

Usage (from the repository root; this is what `benches/compare.py` runs):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=2 \\
        python3 benches/sgemm_peak.py --sizes 1024,2048,3072 --repeats 7

For each square size n it times `numpy.matmul(a, b, out=c)` on random float32 `(n, n)`
operands `--repeats` times after one untimed product and keeps the best time; the peak is the
best `2·n³ / seconds` over all sizes, in GFLOP/s. The thread count is whatever the environment
gives the BLAS (`OPENBLAS_NUM_THREADS` / `OMP_NUM_THREADS`): set it on the command line, as
above, because OpenBLAS reads it when it loads. `OPENBLAS_CORETYPE` (which forces a kernel
family) and `OPENBLAS_L2_SIZE` (which changes its blocking) are removed so that OpenBLAS
chooses for the machine it runs on. Printed: the model name from `lscpu`, the BLAS's own
description of itself where it offers one (core name, threads), each size's best, and the
peak; `--json` prints one JSON line instead. Needs: numpy.
"""
import argparse
import ctypes
import glob
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

ENV_KEYS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def cpu_model():
    """`lscpu`'s "Model name", or "unknown"."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def blas_info():
    """What the BLAS NumPy loaded says of itself: core name, thread count, configuration."""
    info = {}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["name"], info["version"] = blas.get("name"), blas.get("version")
    except Exception:  # older NumPy: no dict mode
        pass
    libs = Path(np.__file__).parent.parent / "numpy.libs"
    for path in sorted(glob.glob(str(libs / "*openblas*.so*"))):
        lib = ctypes.CDLL(path)
        for key, names, restype in (
            ("core", ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"),
             ctypes.c_char_p),
            ("threads", ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                         "openblas_get_num_threads"), ctypes.c_int),
        ):
            for name in names:
                fn = getattr(lib, name, None)
                if fn is not None:
                    fn.restype = restype
                    value = fn()
                    info[key] = value.decode() if isinstance(value, bytes) else value
                    break
    return info


def best_gflops(n, repeats, rng):
    """Best GFLOP/s of `repeats` `(n, n) · (n, n)` float32 products."""
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,2048,3072", help="comma-separated square sizes")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 1 or args.repeats < 1:
        parser.error("--sizes and --repeats must be positive")
    rng = np.random.default_rng(0)
    by_size = {n: round(best_gflops(n, args.repeats, rng), 1) for n in sizes}
    result = {
        "cpu": cpu_model(),
        "blas": blas_info(),
        # None: not set (OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE should be).
        "env": {k: os.environ.get(k) for k in ENV_KEYS},
        "repeats": args.repeats,
        "gflops_by_size": by_size,
        "peak_gflops": max(by_size.values()),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"cpu: {result['cpu']}")
    print(f"blas: {result['blas']}")
    print(f"environment: {result['env']}")
    for n, g in by_size.items():
        print(f"sgemm {n}x{n}x{n}: {g:8.1f} GFLOP/s (best of {args.repeats})")
    print(f"peak: {result['peak_gflops']:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
