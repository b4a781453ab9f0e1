#!/usr/bin/env bash
# Packs what the Node step of bench/gpu-check.sh needs on a GPU machine that has no Node and
# no node_modules into one file, gpu-kit.tar.xz (ignored by git), to carry there:
#   gpu-kit/node              this machine's node binary
#   gpu-kit/eigenlorax.node   the addon for a generic x86-64 CPU, single-threaded, without
#                             the CUDA plugin (gpu-check.sh builds that on the GPU machine)
#   node_modules/...          ava, the library's run-time dependencies (package.json's
#                             "dependencies" but cmake-js and node-addon-api, which only
#                             build the addon) and theirs
#   dist/                     the compiled library and tests
# About 30 MB; the device tool carries at most 64 MiB. Usage: bash bench/gpu-kit.sh
set -euo pipefail
cd "$(dirname "$0")/.."

npm run --silent build
# A scratch build folder, so build/ (the cmake-js addon of this machine) stays as it is.
npx cmake-js compile -O build-kit --CDEIGENLORAX_PORTABLE=ON --CDEIGENLORAX_OPENMP=OFF \
  --CDEIGENLORAX_CUDA=OFF --CDEIGENLORAX_CUDA_EMULATION=OFF > build-kit.log 2>&1 \
  || { tail -20 build-kit.log; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/gpu-kit"
cp "$(command -v node)" "$stage/gpu-kit/node"
cp build-kit/Release/eigenlorax.node "$stage/gpu-kit/eigenlorax.node"
# The dependency closure, resolved as Node resolves it (nested copies included).
node -e '
const fs = require("fs"), path = require("path");
const seen = new Set();
function visit(name, from) {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const p = path.join(dir, "node_modules", name);
    if (fs.existsSync(path.join(p, "package.json"))) {
      if (seen.has(p)) return;
      seen.add(p);
      const pkg = JSON.parse(fs.readFileSync(path.join(p, "package.json"), "utf8"));
      for (const d of Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies })) visit(d, p);
      return;
    }
    if (path.dirname(dir) === dir) return;
  }
}
visit("ava", process.cwd());
const own = JSON.parse(fs.readFileSync("package.json", "utf8"));
for (const d of Object.keys(own.dependencies ?? {})) {
  if (d !== "cmake-js" && d !== "node-addon-api") visit(d, process.cwd());
}
for (const p of seen) console.log(path.relative(process.cwd(), p));
' > "$stage/packages.txt"
tar -cf "$stage/kit.tar" -C "$stage" gpu-kit
tar -rf "$stage/kit.tar" dist package.json -T "$stage/packages.txt"
xz -T0 -6 -c "$stage/kit.tar" > gpu-kit.tar.xz
echo "gpu-kit.tar.xz: $(du -h gpu-kit.tar.xz | cut -f1), $(wc -l < "$stage/packages.txt") packages"
