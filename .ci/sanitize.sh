#!/usr/bin/env bash
# Builds the addon with AddressSanitizer + UndefinedBehaviorSanitizer into its own folder
# (build-asan/, beside cmake-js's build/) and runs the native-facing test files against it
# (EIGENLORAX_ADDON). Node is not instrumented, so the sanitizer runtimes are preloaded;
# node's own allocations at exit are not ours, so leak checking is off. Any touch of freed
# memory, any overflow, any undefined behaviour in the addon or the kernels aborts the test
# process, which fails the test that ran it (test/detach.test.ts runs each hostile scenario
# in a child process that inherits all of this).
#   .ci/sanitize.sh [ava arguments...]   (default: the native-facing test files)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${EIGENLORAX_SANITIZE_OUT:-build-asan}

# RelWithDebInfo (-O1 -g1 under EIGENLORAX_SANITIZE, see CMakeLists.txt). The CUDA
# plugin and its CPU emulation are other binaries, not built here.
npx cmake-js compile --out "$out" --config RelWithDebInfo --parallel "${JOBS:-2}" \
  --CDEIGENLORAX_SANITIZE=ON --CDEIGENLORAX_CUDA=OFF --CDEIGENLORAX_CUDA_EMULATION=OFF >&2
addon="$PWD/$out/RelWithDebInfo/eigenlorax.node"
[ -f "$addon" ] || addon="$PWD/$out/Release/eigenlorax.node"
npx tsc -p tsconfig.json

libasan=$(g++ -print-file-name=libasan.so)
libubsan=$(g++ -print-file-name=libubsan.so)
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  tests=(dist/test/detach.test.js dist/test/rsvd.test.js dist/test/lowrank.test.js dist/test/linalg.test.js
    dist/test/dtype.test.js dist/test/multiadapter.test.js dist/test/subspace-native.test.js
    dist/test/errors.test.js dist/test/train-kernels.test.js dist/test/train-fused.test.js dist/test/native-boundary.test.js
    dist/test/subspace-files.test.js dist/test/async.test.js dist/test/owned-buffers.test.js dist/test/sha256.test.js)
fi
echo "Testing the sanitizer build: $addon" >&2
# new/delete-type mismatch checks trip on libstdc++ inside node, which ASan does not see.
EIGENLORAX_ADDON="$addon" \
  LD_PRELOAD="$libasan:$libubsan" \
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allow_user_segv_handler=1:new_delete_type_mismatch=0 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  npx ava --timeout 20m "${tests[@]}"
