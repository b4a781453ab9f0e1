#!/usr/bin/env python3
"""numpy peer of bench/rsvd.ts: the same randomized SVD, timed in the same run.

Halko, Martinsson and Tropp (2011), Algorithm 4.4, exactly as native/core/linalg.cpp
does it: Gaussian test matrix Omega (n x l), Y = A Omega, Q = qr(Y); q times
{ Z = qr(A^T Q), Q = qr(A Z) } (re-orthonormalised at every half step); B = Q^T A;
small SVD of B; U = Q Ub. float32 throughout (numpy's QR and SVD of float32 input
stay in float32).

It is a long-lived process driven by one JSON object per line on stdin and answering
one JSON object per line on stdout, so bench/rsvd.ts can interleave its own runs with
these ones (same machine state for both) and load each test matrix only once.

Commands:
  {"cmd": "info"}
  {"cmd": "load", "path": P, "rows": m, "cols": n}   raw little-endian f32, row-major
  {"cmd": "rsvd", "k": k, "p": p, "q": q, "seed": s, "warm": w, "repeat": r}
      numpy's own Gaussian Omega (its generation is timed too); w untimed calls, then
      r timed calls back to back; answers {"times": [...], "S": [...]}
  {"cmd": "rsvd_same_omega", "k", "p", "q", "seed"}   Omega drawn with eigenlorax's
      generator (xoshiro256** seeded by splitmix64, Box-Muller in double, one stream
      per column; native/core/random.h and fillGaussianColumns in linalg.cpp), so numpy and eigenlorax work on the same sketch and
      their singular values can be compared for accuracy. Not timed (the generator is
      pure Python).
  {"cmd": "gemm", "l": l, "seed": s, "warm": w, "repeat": r}   one pass: A @ Omega, timed
  {"cmd": "svd"}                                      exact singular values, float64
  {"cmd": "lib_rsvd", "lib": "sklearn"|"torch", "k", "p", "q", "seed", "warm", "repeat"}
      the libraries' own randomized SVDs as peers (imported on first use; "info"
      lists which import): sklearn.utils.extmath.randomized_svd(A, k, n_oversamples=p,
      n_iter=q, power_iteration_normalizer="QR", random_state=seed) and
      torch.svd_lowrank(A, q=k + p, niter=q) on a float32 tensor sharing A's memory.
  {"cmd": "quit"}
"""
import json
import math
import os
import platform
import sys
import time

import numpy as np

A = None
_omega_cache = {}


def blas_info():
    info = {}
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{deps.get('name')} {deps.get('version')}"
    except Exception:  # older numpy: no dict mode
        info["blas"] = "unknown"
    # scipy-openblas wheels export these; other builds simply do not report them.
    try:
        import ctypes
        import glob

        libdir = os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs")
        for path in glob.glob(os.path.join(libdir, "*openblas*")):
            lib = ctypes.CDLL(path)
            for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("", "")):
                try:
                    core = getattr(lib, f"{prefix}openblas_get_corename{suffix}")
                    threads = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}")
                except AttributeError:
                    continue
                core.restype = ctypes.c_char_p
                info["blas_core"] = core().decode()
                info["blas_threads"] = int(threads())
                break
            if "blas_core" in info:
                break
    except Exception:
        pass
    return info


def rsvd(a, omega, k, power_iters):
    y = a @ omega
    q, _ = np.linalg.qr(y)
    for _ in range(power_iters):
        z, _ = np.linalg.qr(a.T @ q)
        q, _ = np.linalg.qr(a @ z)
    b = q.T @ a
    ub, s, vt = np.linalg.svd(b, full_matrices=False)
    u = q @ ub[:, :k]
    v = vt[:k].T
    return u, s[:k], v


def sketch_size(k, p):
    m, n = A.shape
    return min(k + p, m, n)


def eigenlorax_gaussians(seed, count):
    """The first `count` draws of eigenlorax::Rng(seed).gaussian(), as float64."""
    mask = (1 << 64) - 1

    def splitmix(x):
        x = (x + 0x9E3779B97F4A7C15) & mask
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return x, z ^ (z >> 31)

    x = seed & mask
    state = []
    for _ in range(4):
        x, word = splitmix(x)
        state.append(word)
    s0, s1, s2, s3 = state
    out = np.empty(count, dtype=np.float64)
    two_pi = 6.283185307179586476925
    i = 0
    while i < count:
        uniforms = []
        for _ in range(2):
            r = (((s1 * 5) & mask) << 7 | ((s1 * 5) & mask) >> 57) & mask
            result = (r * 9) & mask
            t = (s1 << 17) & mask
            s2 ^= s0
            s3 ^= s1
            s1 ^= s2
            s0 ^= s3
            s2 ^= t
            s3 = ((s3 << 45) | (s3 >> 19)) & mask
            uniforms.append(((result >> 11) + 0.5) * 2.0**-53)
        radius = math.sqrt(-2.0 * math.log(uniforms[0]))
        angle = two_pi * uniforms[1]
        out[i] = radius * math.cos(angle)
        if i + 1 < count:
            out[i + 1] = radius * math.sin(angle)
        i += 2
    return out


def library(name):
    """The module of a peer library, or raises ImportError."""
    if name == "sklearn":
        from sklearn.utils.extmath import randomized_svd

        return randomized_svd
    if name == "torch":
        import torch

        return torch
    raise ValueError(f"unknown library {name!r}")


def library_versions():
    versions = {}
    for name, module in (("sklearn", "sklearn"), ("torch", "torch")):
        try:
            versions[name] = __import__(module).__version__
        except Exception as error:  # any import failure means: not a peer here
            versions[name] = None
            versions[f"{name}_why"] = f"{type(error).__name__}: {error}"
    return versions


_torch_a = None


def lib_rsvd(name, k, p, q, seed):
    global _torch_a
    if name == "sklearn":
        _, s, _ = library("sklearn")(
            A, k, n_oversamples=p, n_iter=q, power_iteration_normalizer="QR", random_state=seed
        )
        return s
    torch = library("torch")
    if _torch_a is None or _torch_a.data_ptr() != A.ctypes.data:
        _torch_a = torch.from_numpy(A)
    torch.manual_seed(seed)
    _, s, _ = torch.svd_lowrank(_torch_a, q=min(k + p, *A.shape), niter=q)
    return s[:k].numpy()


def handle(msg):
    global A
    cmd = msg["cmd"]
    if cmd == "info":
        return {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "env_threads": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
            **blas_info(),
            **({"libs": library_versions()} if msg.get("libs") else {}),
        }
    if cmd == "load":
        m, n = int(msg["rows"]), int(msg["cols"])
        A = None  # free the previous matrix first
        A = np.fromfile(msg["path"], dtype="<f4", count=m * n).reshape(m, n)
        if A.size != m * n:
            raise ValueError(f"{msg['path']}: expected {m * n} floats, read {A.size}")
        return {"ok": True}
    if cmd == "rsvd":
        k, p, q, seed = int(msg["k"]), int(msg["p"]), int(msg["q"]), int(msg["seed"])
        l = sketch_size(k, p)
        times = []
        for i in range(int(msg.get("warm", 0)) + int(msg.get("repeat", 1))):
            start = time.perf_counter()
            omega = np.random.default_rng(seed).standard_normal((A.shape[1], l), dtype=np.float32)
            _, s, _ = rsvd(A, omega, k, q)
            times.append(time.perf_counter() - start)
        return {"times": times[int(msg.get("warm", 0)):], "S": s.astype(float).tolist()}
    if cmd == "rsvd_same_omega":
        k, p, q, seed = int(msg["k"]), int(msg["p"]), int(msg["q"]), int(msg["seed"])
        n = A.shape[1]
        l = sketch_size(k, p)
        key = (n, l, seed)
        if key not in _omega_cache:
            # eigenlorax draws column j of its n x l Omega from its own stream,
            # Rng(seed * 0x9e3779b97f4a7c15 + j) (fillGaussianColumns in linalg.cpp).
            mask = (1 << 64) - 1
            omega = np.empty((n, l), dtype=np.float32, order="F")
            for j in range(l):
                omega[:, j] = eigenlorax_gaussians((seed * 0x9E3779B97F4A7C15 + j) & mask, n)
            _omega_cache.clear()
            _omega_cache[key] = omega
        _, s, _ = rsvd(A, _omega_cache[key], k, q)
        return {"S": s.astype(float).tolist()}
    if cmd == "gemm":
        l, seed = int(msg["l"]), int(msg["seed"])
        omega = np.random.default_rng(seed).standard_normal((A.shape[1], l), dtype=np.float32)
        times = []
        for i in range(int(msg.get("warm", 0)) + int(msg.get("repeat", 1))):
            start = time.perf_counter()
            y = A @ omega
            times.append(time.perf_counter() - start)
            del y
        return {"times": times[int(msg.get("warm", 0)):]}
    if cmd == "lib_rsvd":
        k, p, q, seed = int(msg["k"]), int(msg["p"]), int(msg["q"]), int(msg["seed"])
        times = []
        for i in range(int(msg.get("warm", 0)) + int(msg.get("repeat", 1))):
            start = time.perf_counter()
            s = lib_rsvd(msg["lib"], k, p, q, seed)
            times.append(time.perf_counter() - start)
        return {"times": times[int(msg.get("warm", 0)):], "S": [float(v) for v in s]}
    if cmd == "svd":
        start = time.perf_counter()
        s = np.linalg.svd(A.astype(np.float64), compute_uv=False)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "S": s[: int(msg.get("count", 64))].tolist()}
    raise ValueError(f"unknown command {cmd!r}")


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        if msg.get("cmd") == "quit":
            break
        try:
            reply = handle(msg)
        except Exception as error:  # reported to the caller, which decides
            reply = {"error": f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
