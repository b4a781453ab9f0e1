#!/usr/bin/env bash
# Builds the addon with node-gyp from binding.gyp in a scratch copy of the sources
# (node-gyp owns build/, where the cmake-js build lives) and prints the .node path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/.gyp-build"}
rm -rf "$out"
mkdir -p "$out"
cp -r "$root/binding.gyp" "$root/package.json" "$root/native" "$out/"
ln -s "$root/node_modules" "$out/node_modules"
# Build against the running Node's own headers (no download): nodedir from npm's config
# when set, else the prefix of this node binary.
nodedir=${npm_config_nodedir:-$(cd "$(dirname "$(command -v node)")/.." && pwd)}
(cd "$out" && "$root/node_modules/.bin/node-gyp" rebuild --nodedir="$nodedir" -j 2 >&2)
echo "$out/build/Release/eigenlorax.node"
