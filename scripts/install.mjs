#!/usr/bin/env node
// `npm install` of eigenlorax. In a project that depends on it: use a prebuilt binary from
// prebuilds/ that fits this machine and loads (checked in a child process), with no
// compiler; else build from source with cmake-js (the addon, and the CUDA plugin when
// nvcc is found). In a development checkout of the repository (test/ is there; the package
// does not ship it): always a native-tuned source build with the development targets
// (CUDA parity check and CPU emulation, benchmarks) that the test suite needs.
//
// Force the source build: `npm install eigenlorax --build-from-source`, or
// EIGENLORAX_BUILD_FROM_SOURCE=1.
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const say = (line) => process.stderr.write(`eigenlorax: ${line}\n`);

/** npm passes `--build-from-source` as npm_config_build_from_source ('true', or a package name as prebuild-install takes it). */
function forcedSource() {
  const flag = process.env.npm_config_build_from_source ?? '';
  const own = process.env.EIGENLORAX_BUILD_FROM_SOURCE ?? '';
  return ['true', '1', 'eigenlorax'].includes(flag) || flag.split(',').includes('eigenlorax') || !['', '0', 'false'].includes(own);
}

function onPath(program) {
  return (process.env.PATH ?? '').split(path.delimiter).some((dir) => dir !== '' && existsSync(path.join(dir, program)));
}

/** cmake-js from this package's dependencies, run by this node (no download: binary.napi_versions in package.json makes it use node-api-headers). */
function compile(extraArgs) {
  const cmakeJs = createRequire(import.meta.url).resolve('cmake-js/bin/cmake-js');
  // EIGENLORAX_CUDA=OFF|ON|AUTO chooses the CUDA plugin build (AUTO: when nvcc is found).
  const cuda = process.env.EIGENLORAX_CUDA ? [`--CDEIGENLORAX_CUDA=${process.env.EIGENLORAX_CUDA}`] : [];
  const args = [cmakeJs, 'compile', ...extraArgs, ...cuda];
  say(`building from source: cmake-js ${args.slice(1).join(' ')}`);
  const run = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
  if (run.status !== 0) {
    say(`the source build failed (exit ${run.status ?? run.signal}). It needs CMake >= 3.15 and a C++17 compiler (g++ >= 9 or clang >= 10).`);
    process.exit(run.status ?? 1);
  }
}

/** The first prebuilt binary that fits and loads in a child process, or null with the reasons said. */
async function usablePrebuilt() {
  const loaderFile = path.join(root, 'dist', 'lib', 'native', 'loader.js');
  if (!existsSync(loaderFile)) return null;
  const { prebuiltCandidates } = await import(pathToFileURL(loaderFile).href);
  const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  const candidates = prebuiltCandidates(dir);
  if (candidates.length === 0) {
    say(`no prebuilt binary for ${process.platform}-${process.arch} with Node-API ${process.versions.napi} in ${dir}`);
    return null;
  }
  if (onPath('nvcc') && process.env.EIGENLORAX_CUDA !== 'OFF' && !existsSync(path.join(dir, 'eigenlorax_cuda.so'))) {
    say('nvcc is on the PATH and the prebuilt binaries have no CUDA plugin: building from source for the GPU backend');
    return null;
  }
  for (const candidate of candidates) {
    const probe = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(candidate.path)}).buildInfo()`], { encoding: 'utf8' });
    if (probe.status === 0) return candidate;
    say(`${candidate.kind} ${candidate.path} does not load here: ${(probe.stderr || '').trim().split('\n').find((l) => /Error/.test(l)) ?? `exit ${probe.status}`}`);
  }
  return null;
}

const development = existsSync(path.join(root, 'test'));
if (development) {
  compile(['--CDEIGENLORAX_DEV=ON']);
} else if (forcedSource()) {
  compile(['--CDEIGENLORAX_DEV=OFF']);
} else {
  const prebuilt = await usablePrebuilt();
  if (prebuilt) {
    // A source build from an earlier install would be loaded first (native/loader.ts).
    rmSync(path.join(root, 'build'), { recursive: true, force: true });
    say(`using the ${prebuilt.kind} binary ${path.relative(root, prebuilt.path)} (no compiler needed)`);
  } else {
    compile(['--CDEIGENLORAX_DEV=OFF']);
  }
}
