#!/usr/bin/env bash
# The package as a user gets it: `npm pack`, then install the tarball into scratch consumer
# projects and use it from JavaScript (ESM and require), TypeScript (moduleResolution
# node16 and bundler) and the command line.
#
#   scripts/consumer-smoke.sh [--tarball FILE] [--mode prebuilt|source|both] [--dir DIR]
#
#   prebuilt  the install must not run a compiler: failing cmake/c++/g++/gcc/cc/clang/make/
#             ninja shims come first on the PATH and must never be called
#   source    `npm install --build-from-source`: cmake-js builds the addon in the consumer
# Uses whatever `node` and `npm` are first on the PATH (CI runs it under Node 20 and 24).
# Without --tarball it packs this checkout (prepack: TypeScript and the prebuilt binaries).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tarball=''
mode=both
dir=''
while [[ $# -gt 0 ]]; do
  case $1 in
    --tarball) tarball=$(realpath "$2"); shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    *) echo "consumer-smoke: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ $mode == prebuilt || $mode == source || $mode == both ]] || { echo "consumer-smoke: --mode prebuilt|source|both" >&2; exit 2; }
dir=${dir:-"$repo/.consumer-smoke"}
rm -rf "$dir"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
say() { printf 'consumer-smoke: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }
say "node $(node --version), npm $(npm --version), in $dir"

if [[ -z $tarball ]]; then
  started=$SECONDS
  tarball=$(cd "$repo" && npm pack --silent --pack-destination "$dir" | tail -n 1)
  tarball="$dir/$tarball"
  say "packed $(basename "$tarball") ($(du -h "$tarball" | cut -f1)) in $((SECONDS - started)) s"
fi
version=$(tar -xOzf "$tarball" package/package.json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).version))')

# --- what the tarball holds -----------------------------------------------------------
tar -tzf "$tarball" > "$dir/contents.txt"
for needed in package/LICENSE package/README.md package/scripts/install.mjs package/CMakeLists.txt \
  package/dist/lib/index.js package/dist/lib/index.d.ts package/dist/lib/train/index.d.ts \
  package/native/third_party/eigen/COPYING.MPL2 package/native/addon/addon.cpp; do
  grep -qx "$needed" "$dir/contents.txt" || fail "the tarball has no $needed"
done
if grep -E '^package/(dist/test|dist/bench|test|bench|build|build-prebuild|\.ci)/' "$dir/contents.txt" | head -n 3 | grep -q .; then
  fail "the tarball holds tests, benchmarks or build outputs: $(grep -E '^package/(dist/test|dist/bench|test|bench|build|build-prebuild|\.ci)/' "$dir/contents.txt" | head -n 3 | tr '\n' ' ')"
fi
prebuilt_count=$(grep -c '^package/prebuilds/linux-x64/eigenlorax\..*\.node$' "$dir/contents.txt" || true)
say "tarball: $(wc -l < "$dir/contents.txt") files, $prebuilt_count prebuilt linux-x64 addons: $(grep '^package/prebuilds/' "$dir/contents.txt" | sed 's|.*/||' | tr '\n' ' ')"

# --- the consumer's code ----------------------------------------------------------------
write_consumer() {
  local project=$1
  mkdir -p "$project"
  cat > "$project/package.json" <<'EOF'
{ "name": "eigenlorax-consumer", "version": "1.0.0", "private": true, "type": "module" }
EOF
  # A PEFT adapter written byte by byte (safetensors: u64 header length, JSON header, data).
  cat > "$project/fixture.mjs" <<'EOF'
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
export const rank = 2, inFeatures = 6, outFeatures = 4, alpha = 8;
export const A = Float32Array.from({ length: rank * inFeatures }, (_, i) => (i % 5) - 2 + i / 10);
export const B = Float32Array.from({ length: outFeatures * rank }, (_, i) => 1 - i / 4);
export function writePeft(folder) {
  mkdirSync(folder, { recursive: true });
  const tensors = [
    ['base_model.model.layers.0.q_proj.lora_A.weight', [rank, inFeatures], A],
    ['base_model.model.layers.0.q_proj.lora_B.weight', [outFeatures, rank], B],
  ];
  const header = {};
  let offset = 0;
  for (const [key, shape, data] of tensors) {
    header[key] = { dtype: 'F32', shape, data_offsets: [offset, offset + data.byteLength] };
    offset += data.byteLength;
  }
  const json = Buffer.from(JSON.stringify(header));
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path.join(folder, 'adapter_model.safetensors'), Buffer.concat([size, json, ...tensors.map(([, , d]) => Buffer.from(d.buffer))]));
  writeFileSync(path.join(folder, 'adapter_config.json'), JSON.stringify({
    peft_type: 'LORA', r: rank, lora_alpha: alpha, target_modules: ['q_proj'], base_model_name_or_path: 'consumer-test-model',
  }));
}
EOF
  cat > "$project/smoke.mjs" <<'EOF'
import assert from 'node:assert/strict';
import { EigenLoraxError, buildInfo, loadAdapter, matrix, rsvd, version } from 'eigenlorax';
import { Sequential } from 'eigenlorax/train';
import { ServedModel } from 'eigenlorax/serve';
import { datasetSize } from 'eigenlorax/data';
import { runDemo } from 'eigenlorax/demo';
import { A, B, alpha, rank, writePeft } from './fixture.mjs';

for (const [name, value] of Object.entries({ Sequential, ServedModel, datasetSize, runDemo })) assert.equal(typeof value, 'function', name);
assert.equal('runDemo' in (await import('eigenlorax')), false, 'the demo is not in the root export');

// rsvd of a 40 x 30 matrix with singular values 5, 3, 1 (orthonormal cosine vectors).
const m = 40, n = 30, sigma = [5, 3, 1];
const basis = (len, k) => Float64Array.from({ length: len }, (_, i) => Math.cos((Math.PI * (i + 0.5) * (k + 1)) / len) * Math.sqrt(2 / len));
const a = matrix(m, n);
sigma.forEach((s, k) => { const u = basis(m, k), v = basis(n, k); for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) a.data[i * n + j] += s * u[i] * v[j]; });
const { S } = await rsvd(a, { rank: 3, seed: 7 });
sigma.forEach((s, k) => assert.ok(Math.abs(S[k] - s) < 1e-4, `singular value ${k}: ${S[k]} vs ${s}`));

writePeft('peft-fixture');
const adapter = await loadAdapter('peft-fixture');
const module = adapter.modules.get('layers.0.q_proj');
assert.ok(module, `modules: ${[...adapter.modules.keys()]}`);
assert.equal(module.scale, alpha / rank);
assert.deepEqual([...module.A.data], [...A]);
assert.deepEqual([...module.B.data], [...B]);
await assert.rejects(loadAdapter('no-such-folder'), (e) => e instanceof EigenLoraxError && e.code === 'ERR_NOT_FOUND');

const info = buildInfo();
console.log(`esm ok: eigenlorax ${version}, ${info.binaryKind} ${info.binary}`);
EOF
  # require(): works where Node loads ES modules synchronously (20.19+, 22.12+), else a clear error.
  cat > "$project/smoke.cjs" <<'EOF'
const assert = require('node:assert/strict');
if (process.features.require_module) {
  const { matrix, rsvd, buildInfo } = require('eigenlorax');
  assert.equal(typeof require('eigenlorax/train').Sequential, 'function');
  rsvd(matrix(8, 6, Float32Array.from({ length: 48 }, (_, i) => Math.sin(i))), { rank: 2 }).then(({ S }) => {
    assert.equal(S.length, 2);
    console.log(`require ok: ${buildInfo().binaryKind}`);
  });
} else {
  assert.throws(() => require('eigenlorax'), { code: 'ERR_REQUIRE_ESM' });
  console.log('require: ERR_REQUIRE_ESM on this Node (use import()), as expected');
}
EOF
  cat > "$project/smoke.ts" <<'EOF'
import { EigenLoraxError, matrix, rsvd, buildInfo, type ErrorCode, type LoraAdapter, type Matrix } from 'eigenlorax';
import { Sequential, Linear, type TrainOptions } from 'eigenlorax/train';
import { AdapterBank, type ServerOptions } from 'eigenlorax/serve';
import type { Dataset } from 'eigenlorax/data';
import type { DemoOptions } from 'eigenlorax/demo';

const code: ErrorCode = 'ERR_NOT_FOUND';
// @ts-expect-error: not a declared error code
const wrong = new EigenLoraxError('x', 'ERR_NO_SUCH_CODE');
const a: Matrix = matrix(6, 4, new Float32Array(24).fill(1));
const { S } = await rsvd(a, { rank: 1 });
const unused: [LoraAdapter | null, TrainOptions | null, ServerOptions | null, Dataset | null, DemoOptions | null] = [null, null, null, null, null];
console.log(`ts ok: ${S[0]!.toFixed(3)} ${code} ${wrong.code} ${typeof Sequential} ${typeof Linear} ${typeof AdapterBank} ${unused.length} ${buildInfo().binaryKind}`);
EOF
  cat > "$project/tsconfig.node16.json" <<'EOF'
{ "compilerOptions": { "module": "node16", "moduleResolution": "node16", "target": "ES2022", "strict": true,
  "noUncheckedIndexedAccess": true, "types": ["node"], "outDir": "out-node16", "skipLibCheck": false }, "files": ["smoke.ts"] }
EOF
  cat > "$project/tsconfig.bundler.json" <<'EOF'
{ "compilerOptions": { "module": "esnext", "moduleResolution": "bundler", "target": "ES2022", "strict": true,
  "types": ["node"], "noEmit": true, "skipLibCheck": false }, "files": ["smoke.ts"] }
EOF
}

run_consumer() {
  local kind=$1 project="$dir/$1"
  write_consumer "$project"
  local shims="$dir/shims-$kind" invoked="$dir/shims-$kind/invoked.log"
  mkdir -p "$shims"
  local path=$PATH
  local -a flags=()
  if [[ $kind == prebuilt ]]; then
    for tool in cmake c++ g++ gcc cc clang clang++ make ninja; do
      printf '#!/bin/sh\necho "%s $*" >> "%s"\necho "consumer-smoke: %s was called during a prebuilt install" >&2\nexit 97\n' "$tool" "$invoked" "$tool" > "$shims/$tool"
      chmod +x "$shims/$tool"
    done
    path="$shims:$PATH"
  else
    flags=(--build-from-source)
  fi
  local started=$SECONDS
  # The consumer's own dev tools first (no native code), so that only eigenlorax's install is timed.
  (cd "$project" && PATH=$path npm install --no-audit --no-fund --save-dev typescript@~5.9.3 @types/node@^20 > "$dir/$kind-tools.log" 2>&1) \
    || { tail -n 30 "$dir/$kind-tools.log" >&2; fail "$kind: installing typescript failed"; }
  started=$SECONDS
  (cd "$project" && PATH=$path npm install --no-audit --no-fund --foreground-scripts "$tarball" "${flags[@]}" > "$dir/$kind-install.log" 2>&1) \
    || { tail -n 40 "$dir/$kind-install.log" >&2; fail "$kind: npm install of the tarball failed"; }
  local took=$((SECONDS - started))
  grep '^eigenlorax: ' "$dir/$kind-install.log" >&2 || true
  [[ ! -e $invoked ]] || fail "$kind: a compiler or build tool ran during the install: $(cat "$invoked")"
  local pkg="$project/node_modules/eigenlorax"
  if [[ $kind == prebuilt ]]; then
    [[ ! -e $pkg/build ]] || fail "prebuilt: the install left a build folder"
  else
    [[ -f $pkg/build/Release/eigenlorax.node ]] || fail "source: no build/Release/eigenlorax.node after a forced source build"
    [[ ! -e $pkg/build/eigenlorax_cuda_check_emulated ]] || fail "source: a consumer build built the development targets"
  fi
  (
    cd "$project"
    export PATH=$path
    node smoke.mjs
    node smoke.cjs
    npx tsc -p tsconfig.node16.json
    node out-node16/smoke.js
    npx tsc -p tsconfig.bundler.json
    [[ $(npx eigenlorax --version) == "$version" ]] || fail "$kind: npx eigenlorax --version is not $version"
    npx eigenlorax info > info.txt
    cat info.txt
    if [[ $kind == prebuilt ]]; then grep -Eq 'prebuilt x86-64-v[234]|prebuilt linux' info.txt || fail "prebuilt: info does not name a prebuilt binary"
    else grep -Eq '(^|[^a-z])source([^a-z]|$)' info.txt || fail "source: info does not say the source build is used"; fi
  ) || fail "$kind: the consumer smoke test failed"
  say "$kind: install ${took} s, smoke test passed"
}

[[ $mode == source ]] || run_consumer prebuilt
[[ $mode == prebuilt ]] || run_consumer source
say "all passed"
