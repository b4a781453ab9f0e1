#!/usr/bin/env node
// `npm run prebuild` (run by `prepack`): the portable binaries shipped in the package,
// prebuilds/<platform>-<arch>/eigenlorax.napi.<libc>.<baseline>.node, found by
// lib/native/loader.ts. On x86-64: an x86-64-v4 build (AVX-512: the rsvd's product kernels),
// an x86-64-v3 build (AVX2, FMA) and an x86-64-v2 fallback (SSE4.2); elsewhere one portable
// build. The CUDA plugin is added beside them when nvcc is
// found (built once with the fallback baseline; every addon build finds it beside itself).
// Each baseline builds in its own folder under build-prebuild/, so a rerun is incremental.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cmakeJs = createRequire(import.meta.url).resolve('cmake-js/bin/cmake-js');
const say = (line) => process.stderr.write(`prebuild: ${line}\n`);

if (process.platform !== 'linux') {
  say(`no prebuilt binaries for ${process.platform} (linux only): consumers build from source`);
  process.exit(0);
}
const libc = process.report.getReport().header.glibcVersionRuntime ? 'glibc' : 'musl';
const platformDir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
// The last baseline also builds the CUDA plugin (when nvcc is found).
const baselines = process.arch === 'x64' ? ['x86-64-v4', 'x86-64-v3', 'x86-64-v2'] : [''];
const cuda = process.env.EIGENLORAX_PREBUILD_CUDA ?? 'AUTO';

rmSync(platformDir, { recursive: true, force: true });
mkdirSync(platformDir, { recursive: true });
const started = Date.now();
for (const [i, march] of baselines.entries()) {
  const out = path.join(root, 'build-prebuild', march || process.arch);
  const args = [
    cmakeJs,
    'compile',
    '--out',
    out,
    '--CDEIGENLORAX_PORTABLE=ON',
    `--CDEIGENLORAX_MARCH=${march}`,
    '--CDEIGENLORAX_DEV=OFF',
    `--CDEIGENLORAX_CUDA=${i === baselines.length - 1 ? cuda : 'OFF'}`,
  ];
  say(`cmake-js ${args.slice(1).join(' ')}`);
  const run = spawnSync(process.execPath, args, { cwd: root, stdio: ['ignore', process.stderr, process.stderr] });
  if (run.status !== 0) {
    say(`the ${march || process.arch} build failed (exit ${run.status ?? run.signal})`);
    process.exit(1);
  }
  const tags = ['napi', libc, march].filter(Boolean).join('.');
  const target = path.join(platformDir, `eigenlorax.${tags}.node`);
  copyFileSync(path.join(out, 'Release', 'eigenlorax.node'), `${target}.tmp`);
  renameSync(`${target}.tmp`, target);
  const plugin = path.join(out, 'Release', 'eigenlorax_cuda.so');
  if (i === baselines.length - 1 && existsSync(plugin)) copyFileSync(plugin, path.join(platformDir, 'eigenlorax_cuda.so'));
}
say(`${readdirSync(platformDir).join(', ')} in ${path.relative(root, platformDir)} (${((Date.now() - started) / 1000).toFixed(0)} s)`);
