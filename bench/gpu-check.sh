#!/usr/bin/env bash
# The GPU device check, run from the repository root on a machine with an NVIDIA GPU, nvcc,
# CMake and Python (+ PyTorch, whose nvidia-* wheels bring cuBLAS); Node is optional.
#
#   bash bench/gpu-check.sh [--quick]
#
# Steps, each under `timeout` and within one time budget (default 450 s):
#   1. find cuBLAS ($EIGENLORAX_CUBLAS, else torch's nvidia/cublas wheel, ldconfig, the toolkit)
#   2. nvidia-smi summary
#   3. configure + build with plain CMake into build-gpu/ (native arch, else the default list)
#   4. build-gpu/eigenlorax_cuda_check   GPU vs CPU parity, gradients, bad inputs
#   5. build-gpu/eigenlorax_cuda_bench   GEMM rate, rsvd vs its GEMM floor, bank apply
#   6. bench/gpu/torch_peers.py          torch.svd_lowrank, torch GEMM, torch LoRA gathers
#   7. the addon's GPU tests (dist/test/cuda.test.js) when Node, node_modules, dist and the
#      built addon exist: from gpu-kit.tar.xz (bench/gpu-kit.sh) when it was carried along,
#      else the machine's own; Node may also come as ./node.xz or $NODE_XZ
#   8. a summary table of the targets, each MET / NOT MET
#
# Environment: OUT (log folder, default ./gpu-check-logs), EIGENLORAX_CUBLAS,
#   EIGENLORAX_GPU_CHECK_BUDGET (seconds, default 450), EIGENLORAX_CHECK_SEED (default: the
#   time), PYTHON (default python3), BUILD_DIR (default build-gpu), NODE_XZ.
# --quick: the benchmarks' small shapes (seconds instead of tens of seconds).
# Exit status: 0 every step ran and passed; 1 something failed (build, a parity check, a
#   benchmark error, the Node tests); 77 the backend cannot run here (no GPU, driver or
#   cuBLAS: the parity check said SKIP) and nothing failed.
set -u
cd "$(dirname "$0")/.." || exit 1

QUICK=""
for arg in "$@"; do
  case $arg in
    --quick) QUICK="--quick" ;;
    *) echo "usage: bash bench/gpu-check.sh [--quick]" >&2; exit 2 ;;
  esac
done

START=$(date +%s)
BUDGET=${EIGENLORAX_GPU_CHECK_BUDGET:-450}
LOG=${OUT:-$PWD/gpu-check-logs}
mkdir -p "$LOG" || exit 1
LOG=$(cd "$LOG" && pwd)
BUILD=${BUILD_DIR:-build-gpu}
PY=${PYTHON:-python3}
SEED=${EIGENLORAX_CHECK_SEED:-$(date +%s)}
TMPDIR_CHECK=$(mktemp -d)
trap 'rm -rf "$TMPDIR_CHECK"' EXIT

declare -A RC SECS
ORDER=()

elapsed() { echo $(( $(date +%s) - START )); }

# step NAME MAX_SECONDS CMD...: runs CMD under timeout (MAX or what is left of the budget),
# output to the terminal and $LOG/NAME.log; records its status (124: timed out).
step() {
  local name=$1 max=$2
  shift 2
  local left=$(( BUDGET - $(elapsed) ))
  local limit=$(( max < left ? max : left ))
  ORDER+=("$name")
  if (( limit < 10 )); then
    echo "== $name: not run, the time budget (${BUDGET}s) is spent"
    RC[$name]=budget
    SECS[$name]=0
    return 125
  fi
  echo "== $name (timeout ${limit}s): $*"
  local t0
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOG/$name.log"
  local rc=${PIPESTATUS[0]}
  RC[$name]=$rc
  SECS[$name]=$(( $(date +%s) - t0 ))
  echo "== $name: exit $rc after ${SECS[$name]}s"
  return "$rc"
}

note() {  # a step that did not run, with the reason
  ORDER+=("$1")
  RC[$1]="skipped: $2"
  SECS[$1]=0
  echo "== $1: skipped ($2)"
}

echo "# eigenlorax GPU device check, $(date -u +%Y-%m-%dT%H:%M:%SZ), logs in $LOG, seed $SEED"

# --- 1. cuBLAS ------------------------------------------------------------------------
if ! command -v nvcc > /dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
NVCC_MAJOR=$(timeout 20 nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9]*\)\..*/\1/p' | head -1)

find_cublas() {
  local candidates=() dirs f
  # torch's pip wheel nvidia-cublas-cuXX: <site-packages>/nvidia/cublas/lib/libcublas.so.N
  dirs=$(timeout 60 "$PY" - <<'EOF' 2>/dev/null
import os, site, sys
out = []
try:
    import nvidia.cublas as m
    out += [os.path.join(p, "lib") for p in m.__path__]
except Exception:
    pass
paths = []
try:
    paths += site.getsitepackages()
except Exception:
    pass
try:
    paths.append(site.getusersitepackages())
except Exception:
    pass
paths += [p for p in sys.path if p.endswith("-packages")]
out += [os.path.join(p, "nvidia", "cublas", "lib") for p in paths]
print("\n".join(dict.fromkeys(out)))
EOF
)
  for d in $dirs; do
    for f in "$d"/libcublas.so.*; do [[ -f $f ]] && candidates+=("$f"); done
  done
  local ldconfig
  ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
  while read -r f; do [[ -f $f ]] && candidates+=("$f"); done < <(timeout 20 "$ldconfig" -p 2>/dev/null | awk '/libcublas\.so\.[0-9]+ /{print $NF}')
  for f in /usr/local/cuda*/lib64/libcublas.so.* /usr/local/cuda*/targets/*/lib/libcublas.so.*; do
    [[ -f $f ]] && candidates+=("$f")
  done
  # Only libcublas.so.N (not .so.N.M.P copies); prefer the major of nvcc (the runtime the
  # backend links), else the highest.
  local best="" bestMajor=-1 major
  for f in "${candidates[@]}"; do
    [[ $(basename "$f") =~ ^libcublas\.so\.([0-9]+)$ ]] || continue
    major=${BASH_REMATCH[1]}
    if [[ -n $NVCC_MAJOR && $major == "$NVCC_MAJOR" ]]; then best=$f; break; fi
    if (( major > bestMajor )); then best=$f; bestMajor=$major; fi
  done
  echo "$best"
}

if [[ -n ${EIGENLORAX_CUBLAS:-} ]]; then
  echo "cuBLAS      EIGENLORAX_CUBLAS=$EIGENLORAX_CUBLAS (given)"
else
  found=$(find_cublas)
  if [[ -n $found ]]; then
    export EIGENLORAX_CUBLAS=$found
    echo "cuBLAS      $found (found; nvcc is CUDA ${NVCC_MAJOR:-?})"
  else
    echo "cuBLAS      not found (no nvidia/cublas wheel, nothing in ldconfig or /usr/local/cuda*); the backend will try the loader's path"
  fi
fi
if [[ -n ${EIGENLORAX_CUBLAS:-} ]]; then
  # libcublas.so.N needs libcublasLt.so.N from the same folder.
  export LD_LIBRARY_PATH=$(dirname "$EIGENLORAX_CUBLAS")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

# --- 2. the GPU -----------------------------------------------------------------------
if command -v nvidia-smi > /dev/null 2>&1; then
  timeout 30 nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,utilization.gpu,clocks.sm,clocks.max.sm,power.limit \
    --format=csv 2>&1 | tee "$LOG/nvidia-smi.log"
else
  echo "nvidia-smi  not found" | tee "$LOG/nvidia-smi.log"
fi

# --- 3. build -------------------------------------------------------------------------
BUILD_OK=0
if ! command -v cmake > /dev/null 2>&1; then
  note configure "cmake not found"
elif ! command -v nvcc > /dev/null 2>&1; then
  note configure "nvcc not found"
else
  if ! step configure 150 cmake -S . -B "$BUILD" -DEIGENLORAX_DEV=ON -DEIGENLORAX_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=native; then
    # 'native' needs CMake >= 3.24 and a visible GPU: fall back to CMakeLists' default list
    # (-U: forget 'native'; the objects already built stay).
    [[ ${RC[configure]} == 124 || ${RC[configure]} == budget ]] || RC[configure]="fell back"
    if ! step configure-default-archs 150 cmake -S . -B "$BUILD" -DEIGENLORAX_DEV=ON -DEIGENLORAX_CUDA=ON -U CMAKE_CUDA_ARCHITECTURES; then
      rm -rf "$BUILD/CMakeCache.txt" "$BUILD/CMakeFiles"  # a cache a failed configure left behind
      step configure-clean 150 cmake -S . -B "$BUILD" -DEIGENLORAX_DEV=ON -DEIGENLORAX_CUDA=ON
    fi
  fi
  if [[ ${RC[configure]} == 0 || ${RC[configure-default-archs]:-} == 0 || ${RC[configure-clean]:-} == 0 ]]; then
    step build 420 cmake --build "$BUILD" -j "$(nproc)" --target eigenlorax_cuda eigenlorax_cuda_check eigenlorax_cuda_bench \
      && BUILD_OK=1
  fi
fi

# --- 4-6. parity check, benchmark, PyTorch peers ----------------------------------------
if (( BUILD_OK )); then
  step check 180 "$BUILD/eigenlorax_cuda_check" --seed "$SEED" --json "$LOG/check.json"
  step bench 240 "$BUILD/eigenlorax_cuda_bench" $QUICK --json "$LOG/bench.json"
else
  note check "no build"
  note bench "no build"
fi
if command -v "$PY" > /dev/null 2>&1; then
  step torch 240 "$PY" bench/gpu/torch_peers.py $QUICK --json "$LOG/torch.json"
else
  note torch "$PY not found"
fi

# --- 7. the addon's GPU tests ---------------------------------------------------------
NODE=""
# The kit of bench/gpu-kit.sh (node, ava, dist, a generic addon), carried as one file.
if [[ -f gpu-kit.tar.xz && ! -x gpu-kit/node ]]; then
  timeout 120 tar -xJf gpu-kit.tar.xz || echo "gpu-kit.tar.xz could not be unpacked"
fi
if [[ -x gpu-kit/node && -f gpu-kit/eigenlorax.node ]]; then
  NODE=$PWD/gpu-kit/node
  export PATH=$PWD/gpu-kit:$PATH  # ava's workers start `node` again
  export EIGENLORAX_ADDON=${EIGENLORAX_ADDON:-$PWD/gpu-kit/eigenlorax.node}
elif command -v node > /dev/null 2>&1; then
  NODE=$(command -v node)
else
  for xzfile in "${NODE_XZ:-}" ./node.xz; do
    if [[ -n $xzfile && -f $xzfile ]]; then
      if timeout 60 xz -dc "$xzfile" > "$TMPDIR_CHECK/node" && chmod +x "$TMPDIR_CHECK/node"; then
        NODE=$TMPDIR_CHECK/node
        export PATH=$TMPDIR_CHECK:$PATH  # ava's workers start `node` again
      fi
      break
    fi
  done
fi
if [[ -z $NODE ]]; then
  note node-tests "no node (nor ./node.xz or \$NODE_XZ)"
elif [[ ! -f node_modules/ava/entrypoints/cli.mjs ]]; then
  note node-tests "node_modules/ava missing (npm install)"
elif [[ ! -f dist/test/cuda.test.js ]]; then
  note node-tests "dist/test/cuda.test.js missing (npm run build)"
elif [[ ! -f build/Release/eigenlorax.node && -z ${EIGENLORAX_ADDON:-} ]]; then
  note node-tests "the addon build/Release/eigenlorax.node is not built"
elif (( ! BUILD_OK )); then
  note node-tests "no plugin build"
else
  # The addon loads the plugin from here instead of beside eigenlorax.node.
  EIGENLORAX_CUDA_PLUGIN=$(cd "$BUILD" && pwd)/eigenlorax_cuda.so
  export EIGENLORAX_CUDA_PLUGIN
  echo "plugin      EIGENLORAX_CUDA_PLUGIN=$EIGENLORAX_CUDA_PLUGIN"
  step node-tests 180 "$NODE" node_modules/ava/entrypoints/cli.mjs dist/test/cuda.test.js
fi

# --- 8. summary -----------------------------------------------------------------------
echo
echo "== summary ($(elapsed)s of ${BUDGET}s)"
STEPS_TSV=$LOG/steps.tsv
: > "$STEPS_TSV"
for name in "${ORDER[@]}"; do printf '%s\t%s\t%s\n' "$name" "${RC[$name]}" "${SECS[$name]}" >> "$STEPS_TSV"; done
if command -v "$PY" > /dev/null 2>&1; then
  timeout 30 "$PY" - "$LOG" <<'EOF'
import json, os, sys
log = sys.argv[1]

def load(name):
    try:
        with open(os.path.join(log, name)) as f:
            return json.load(f)
    except Exception:
        return None

steps = [line.rstrip("\n").split("\t") for line in open(os.path.join(log, "steps.tsv")) if line.strip()]
check, bench, torch = load("check.json"), load("bench.json"), load("torch.json")
def status(rc):
    named = {"0": "ok", "77": "SKIP", "124": "TIMED OUT", "137": "KILLED", "budget": "no time left"}
    return named.get(rc, f"FAILED ({rc})" if rc.isdigit() else rc)
sw = max([len("status")] + [len(status(rc)) for _, rc, _ in steps])
print(f"{'step':<24}  {'status':<{sw}}  seconds")
for name, rc, secs in steps:
    print(f"{name:<24}  {status(rc):<{sw}}  {secs}")
print()

rows = []
def row(metric, value, target="", met=None):
    verdict = "" if met is None else ("MET" if met else "NOT MET")
    rows.append((metric, value, target, verdict))

if check and not check.get("skipped"):
    row("parity checks passed / failed", f"{check['passed']} / {check['failed']}", "0 failed", check["failed"] == 0)
elif check:
    row("parity checks", "SKIP: " + check.get("reason", ""))
else:
    row("parity checks", "n/a (no check.json)")

g = (bench or {}).get("gemm")
tg = (torch or {}).get("gemm")
if g:
    row("GEMM f32 TFLOP/s, ours (A X / A^T Y)", f"{g['tflopsAX']:.1f} / {g['tflopsAtY']:.1f}")
if tg:
    row("GEMM f32 TFLOP/s, torch (A X / A^T Y)", f"{tg['tflopsAX']:.1f} / {tg['tflopsAtY']:.1f}")
r = (bench or {}).get("rsvd")
tr = (torch or {}).get("rsvd")
if r:
    row(f"rsvd {r['m']}x{r['n']} k={r['k']} p={r['p']} q={r['q']}, ours ms", f"{r['ms']:.1f}")
if tr:
    row(f"torch.svd_lowrank q={tr['q']} niter={tr['niter']} ms", f"{tr['ms']:.1f}")
if r and tr:
    row("rsvd speed-up vs torch.svd_lowrank", f"{tr['ms'] / r['ms']:.2f}x", ">= 3x", tr["ms"] / r["ms"] >= 3)
elif r or tr:
    row("rsvd speed-up vs torch.svd_lowrank", "n/a (one side missing)", ">= 3x")
if r:
    row("rsvd / GEMM floor (2q+2 passes)", f"{r['ratioToFloor']:.2f}x", "<= 2x", r["ratioToFloor"] <= 2)

def at(results, count):
    for x in results or []:
        if x["adapters"] == count:
            return x
    return None

bank = at(((bench or {}).get("bank") or {}).get("results"), 1024)
tbank = at(((torch or {}).get("bank") or {}).get("results"), 1024)
if bank:
    ratio = bank["gatherAdapterMs"] / bank["eigenAdapterMs"]
    row("bank, 1024 adapters, adapter part: eigen ms", f"{bank['eigenAdapterMs']:.3f}")
    row("  vs our gather (loraBankApply)", f"{ratio:.2f}x", ">= 3x", ratio >= 3)
    row("  whole layer: our gather / eigen", f"{bank['gatherLayerMs'] / bank['eigenLayerMs']:.2f}x")
if bank and tbank:
    ratio = tbank["gatherAdapterMs"] / bank["eigenAdapterMs"]
    row("  vs torch gather (A_stack[idx] + bmm)", f"{ratio:.2f}x", ">= 3x", ratio >= 3)
    row("  vs torch segments (PEFT mixed batch)", f"{tbank['segmentsAdapterMs'] / bank['eigenAdapterMs']:.2f}x")
    row("  whole layer: torch gather / eigen", f"{tbank['gatherLayerMs'] / bank['eigenLayerMs']:.2f}x")
elif bank or tbank:
    row("  vs torch gather", "n/a (one side missing)", ">= 3x")
if bench and bench.get("quick"):
    row("(benchmarks ran with --quick shapes: targets are for the full shapes)", "")

w = [max(len(x[i]) for x in rows + [("metric", "value", "target", "verdict")]) for i in range(4)]
print(f"{'metric':<{w[0]}}  {'value':<{w[1]}}  {'target':<{w[2]}}  verdict")
print(f"{'-' * w[0]}  {'-' * w[1]}  {'-' * w[2]}  {'-' * w[3]}")
for m, v, t, verdict in rows:
    print(f"{m:<{w[0]}}  {v:<{w[1]}}  {t:<{w[2]}}  {verdict}".rstrip())
EOF
else
  cat "$STEPS_TSV"
fi

# --- exit status ----------------------------------------------------------------------
# Failed: any step that ran and did not pass, or a GPU step that could not run. A step
# that says SKIP (77) is not a failure; the whole check is "skipped" when the parity check
# found no usable GPU.
failed=0
failures=""
for name in "${ORDER[@]}"; do
  rc=${RC[$name]}
  case $name:$rc in
    *:0 | *:77 | configure-default-archs:* | configure-clean:* | torch:skipped* | node-tests:skipped*) ;;
    configure:*)
      [[ ${RC[configure-default-archs]:-x} == 0 || ${RC[configure-clean]:-x} == 0 ]] || { failed=1; failures+=" configure"; } ;;
    *) failed=1; failures+=" $name" ;;
  esac
done
if (( failed )); then echo "RESULT: FAILED:$failures (logs in $LOG)"; exit 1; fi
if [[ ${RC[check]:-} == 77 ]]; then echo "RESULT: SKIPPED, the CUDA backend cannot run here: $(head -1 "$LOG/check.log")"; exit 77; fi
echo "RESULT: passed (logs in $LOG)"
exit 0
