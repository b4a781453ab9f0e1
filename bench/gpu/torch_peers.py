#!/usr/bin/env python3
"""PyTorch peers of bench/native/cuda_bench.cpp, on the same GPU and the same shapes.

    python3 bench/gpu/torch_peers.py [--repeats R] [--quick] [--only gemm|rsvd|bank] [--json PATH]

(a) gemm  torch.mm in f32 (TF32 off, as cuBLAS' default math in our backend) on the two
          products of an rsvd: A X (m x n times n x l) and A^T Y (n x m times m x l),
          m = 16384, n = 65536, l = 144.
(b) rsvd  torch.svd_lowrank(A, q=144, niter=2): Halko et al. with 2 power iterations and
          144 sketch columns, the same work as our k = 128, p = 16, q = 2. A is built with
          the recipe of cuda_bench.cpp (singular values about 1/(1+j) for j < 256, plus a
          rank-512 Gaussian noise at 0.1 s_k), from torch's own generator.
(c) bank  the LoRA gather baselines for 256 rows, d = 4096, r = 16 and 1, 16, 256, 1024
          adapters (rows assigned as in cuda_bench.cpp), adapter part alone and whole layer:
          - gather:   A_stack[idx], B_stack[idx] and two torch.bmm (shrink, expand): the
                      standard per-row gather;
          - segments: PEFT's mixed-batch forward (LoraLayer._mixed_batch_forward): group the
                      rows by adapter in Python, then per adapter x[rows] -> lora_A ->
                      lora_B -> result[rows] += ..., grouping included in the time as PEFT
                      does it on every call.
          The adapters are reconstructions A_i = alpha_i^T V_A^T, B_i = U_B beta_i (scale 1),
          as in cuda_bench.cpp; both variants must give the same y (max rel diff shown).

Times: CUDA events on the current stream, medians of R rounds (default 10, 5 with --quick)
after a warm-up round; contenders interleaved; calls under 2 ms run in bursts.
--quick: m = 2048, n = 8192, d = 1024. Exit status: 0 done, 1 error, 77 no torch / no GPU.
"""
import argparse
import json
import math
import statistics
import sys

BURST_MS = 2.0
MAX_BURST = 50


def skip(reason, json_path):
    print(f"SKIP: {reason}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"skipped": True, "reason": reason}, f)
    sys.exit(77)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["gemm", "rsvd", "bank"])
    ap.add_argument("--json")
    args = ap.parse_args()

    try:
        import torch
    except Exception as e:  # ImportError, or a broken install
        skip(f"PyTorch is not importable ({type(e).__name__}: {e})", args.json)
    if not torch.cuda.is_available():
        skip(f"torch {torch.__version__}: torch.cuda.is_available() is False (no GPU, no driver or a CPU-only build)",
             args.json)

    repeats = args.repeats if args.repeats > 0 else (5 if args.quick else 10)
    m, n = (2048, 8192) if args.quick else (16384, 65536)
    k, p, q_iters = 128, 16, 2
    rows, d, K, r = 256, (1024 if args.quick else 4096), 64, 16
    counts = [1, 16, 256, 1024]
    do_gemm = args.only in (None, "gemm", "rsvd")
    do_rsvd = args.only in (None, "rsvd")
    do_bank = args.only in (None, "bank")

    # Full f32 products on both sides: our backend runs cuBLAS in its default math (no TF32).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(0)
    print(f"# PyTorch peers{' (--quick shapes)' if args.quick else ''}")
    print(f"torch       {torch.__version__}, CUDA {torch.version.cuda}, TF32 matmul off")
    print(f"device      {props.name}, compute {props.major}.{props.minor}, {props.multi_processor_count} SMs, "
          f"{props.total_memory / 2**30:.1f} GiB")
    print(f"timing      CUDA events; medians of {repeats} rounds after a warm-up round; contenders interleaved\n")
    sys.stdout.flush()

    def time_ms(fn, burst=1):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(burst):
            fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / burst

    def run_interleaved(contenders, rounds):
        """contenders: list of (name, fn); returns {name: median ms}."""
        bursts, times = {}, {name: [] for name, _ in contenders}
        for name, fn in contenders:
            fn()
            once = time_ms(fn)
            bursts[name] = 1 if once >= BURST_MS else min(MAX_BURST, max(1, math.ceil(BURST_MS / max(once, 1e-3))))
        for rnd in range(rounds):
            order = contenders if rnd % 2 == 0 else list(reversed(contenders))
            for name, fn in order:
                times[name].append(time_ms(fn, bursts[name]))
        return {name: statistics.median(v) for name, v in times.items()}

    result = {"skipped": False, "torch": torch.__version__, "cuda": torch.version.cuda, "device": props.name,
              "tf32": False, "quick": args.quick, "repeats": repeats}
    gen = torch.Generator(device=dev)

    if do_gemm or do_rsvd:
        print(f"  building the {m} x {n} test matrix ...", file=sys.stderr)
        gen.manual_seed(1)
        s = 1.0 / (1.0 + torch.arange(256, device=dev, dtype=torch.float32))
        g1 = torch.randn(m, 256, device=dev, generator=gen) * (s / math.sqrt(m))
        g2 = torch.randn(256, n, device=dev, generator=gen) / math.sqrt(n)
        a = g1 @ g2
        del g1, g2
        g3 = torch.randn(m, 512, device=dev, generator=gen) / math.sqrt(m)
        g4 = torch.randn(512, n, device=dev, generator=gen) / math.sqrt(n)
        a.addmm_(g3, g4, alpha=0.1 / (1 + k))
        del g3, g4
        torch.cuda.synchronize()

        l = k + p
        x = torch.randn(n, l, device=dev, generator=gen)
        y = torch.empty(m, l, device=dev)
        z = torch.empty(n, l, device=dev)
        med = run_interleaved([("AX", lambda: torch.mm(a, x, out=y)), ("AtY", lambda: torch.mm(a.t(), y, out=z))],
                              repeats)
        flops = 2.0 * m * n * l
        gemm = {"m": m, "n": n, "l": l, "msAX": med["AX"], "msAtY": med["AtY"],
                "tflopsAX": flops / (med["AX"] * 1e-3) / 1e12, "tflopsAtY": flops / (med["AtY"] * 1e-3) / 1e12}
        result["gemm"] = gemm
        print("## (a) f32 GEMM, torch.mm")
        print(f"Y = A X     {m} x {n} . {n} x {l}   {gemm['msAX']:.2f} ms   {gemm['tflopsAX']:.1f} TFLOP/s")
        print(f"Z = A^T Y   {n} x {m} . {m} x {l}   {gemm['msAtY']:.2f} ms   {gemm['tflopsAtY']:.1f} TFLOP/s\n")
        del x, y, z

        if do_rsvd:
            out = {}

            def lowrank():
                out["usv"] = torch.svd_lowrank(a, q=l, niter=q_iters)

            med = run_interleaved([("svd_lowrank", lowrank)], repeats)
            u, sv, v = out["usv"]
            floor = (q_iters + 1) * (gemm["msAX"] + gemm["msAtY"])
            result["rsvd"] = {"m": m, "n": n, "q": l, "niter": q_iters, "ms": med["svd_lowrank"],
                              "floorMs": floor, "ratioToFloor": med["svd_lowrank"] / floor,
                              "s0": float(sv[0]), "sk": float(sv[k - 1])}
            print(f"## (b) torch.svd_lowrank(A, q={l}, niter={q_iters}) of {m} x {n} f32")
            print(f"median {med['svd_lowrank']:.1f} ms; its GEMM floor ({2 * q_iters + 2} passes at torch.mm's rates) "
                  f"{floor:.1f} ms, ratio {med['svd_lowrank'] / floor:.2f}x; s_0 = {float(sv[0]):.4g}, "
                  f"s_{k - 1} = {float(sv[k - 1]):.4g}\n")
            del u, sv, v, out
        del a
        torch.cuda.empty_cache()

    if do_bank:
        gen.manual_seed(2)
        nmax = max(counts)
        x = torch.randn(rows, d, device=dev, generator=gen)
        w = torch.randn(d, d, device=dev, generator=gen) / math.sqrt(d)
        bias = torch.randn(d, device=dev, generator=gen)
        va = torch.randn(d, K, device=dev, generator=gen) / math.sqrt(d)
        ub = torch.randn(d, K, device=dev, generator=gen) / math.sqrt(d)
        alpha = torch.randn(nmax, K, r, device=dev, generator=gen)
        beta = torch.randn(nmax, K, r, device=dev, generator=gen)
        a_stack = (alpha.transpose(1, 2) @ va.t()).contiguous()  # (N, r, d_in): A_i = alpha_i^T V_A^T
        b_stack = (ub @ beta).contiguous()  # (N, d_out, r): B_i = U_B beta_i
        scales = torch.ones(nmax, device=dev)
        del alpha, beta
        wt = w.t()

        def gather(idx):
            ag = a_stack[idx]  # (rows, r, d_in)
            bg = b_stack[idx]  # (rows, d_out, r)
            t = torch.bmm(ag, x.unsqueeze(2))  # shrink: (rows, r, 1)
            return torch.bmm(bg, t).squeeze(2) * scales[idx].unsqueeze(1)  # expand

        def segments(adapter_names, result):
            # PEFT LoraLayer._mixed_batch_forward, with F.linear for lora_A / lora_B.
            unique_adapters = set(adapter_names)
            sub_batch_indices_list = []
            for adapter in unique_adapters:
                sub_batch_indices_list.append([i for i, item in enumerate(adapter_names) if item == adapter])
            for i, adapter in enumerate(unique_adapters):
                sub_batch = x[sub_batch_indices_list[i]]
                out = torch.nn.functional.linear(torch.nn.functional.linear(sub_batch, a_stack[adapter]),
                                                 b_stack[adapter]) * scales[adapter]
                result[sub_batch_indices_list[i]] += out
            return result

        bank = []
        for count in counts:
            names = [b % count if count <= rows else b * count // rows for b in range(rows)]
            idx = torch.tensor(names, device=dev, dtype=torch.long)
            ref = gather(idx)
            seg = segments(names, torch.zeros(rows, d, device=dev))
            diff = float((ref - seg).abs().max() / ref.abs().max())
            med = run_interleaved([
                ("gather adapter", lambda: gather(idx)),
                ("segments adapter", lambda: segments(names, torch.zeros(rows, d, device=dev))),
                ("gather layer", lambda: torch.addmm(bias, x, wt).add_(gather(idx))),
                ("segments layer", lambda: segments(names, torch.addmm(bias, x, wt))),
                ("base", lambda: torch.addmm(bias, x, wt)),
            ], repeats)
            bank.append({"adapters": count, "distinct": len(set(names)), "gatherAdapterMs": med["gather adapter"],
                         "segmentsAdapterMs": med["segments adapter"], "gatherLayerMs": med["gather layer"],
                         "segmentsLayerMs": med["segments layer"], "baseMs": med["base"], "maxRelDiff": diff})
            print(f"  bank: {count} adapters done", file=sys.stderr)
        result["bank"] = {"rows": rows, "d": d, "r": r, "results": bank}
        print(f"## (c) LoRA gather baselines in PyTorch, {rows} rows, d_in = d_out = {d}, r = {r} (ms, median)")
        header = ["adapters", "distinct", "gather adapter", "segments adapter", "gather layer", "segments layer", "base",
                  "max rel diff"]
        table = [[str(b["adapters"]), str(b["distinct"]), f"{b['gatherAdapterMs']:.3f}", f"{b['segmentsAdapterMs']:.3f}",
                  f"{b['gatherLayerMs']:.3f}", f"{b['segmentsLayerMs']:.3f}", f"{b['baseMs']:.3f}",
                  f"{b['maxRelDiff']:.1e}"] for b in bank]
        widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
        print("  ".join(h.rjust(widths[i]) for i, h in enumerate(header)))
        print("  ".join("-" * wd for wd in widths))
        for row in table:
            print("  ".join(c.rjust(widths[i]) for i, c in enumerate(row)))
        print("gather = A_stack[idx], B_stack[idx] + two bmm; segments = PEFT's per-adapter loop (grouping in "
              "Python included);\nadapter = the adapters' delta alone; layer = x W^T + b + adapters; "
              "max rel diff = max |y_gather - y_segments| / max |y_gather|.")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except Exception as e:  # an error is a result too: say what failed, exit 1
        print(f"ERROR: {type(e).__name__}: {e}")
        sys.exit(1)
