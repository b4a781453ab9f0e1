/** Which addon binary is loaded (lib/native/loader.ts): source build, prebuilt by CPU baseline, EIGENLORAX_ADDON. */
import test, { type ExecutionContext } from 'ava';
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { EigenLoraxError, buildInfo } from '../lib/index.js';
import { tempDir } from './helpers/safetensors-fixtures.js';
import { ADDON_NAPI_VERSION, addonCandidates, cpuLevels, loadAddon, prebuiltCandidates } from '../lib/native/loader.js';

const V3_FLAGS = 'fpu sse sse2 ssse3 sse4_1 sse4_2 cx16 lahf_lm popcnt avx avx2 bmi1 bmi2 f16c fma movbe xsave';
const V2_FLAGS = 'fpu sse sse2 ssse3 sse4_1 sse4_2 cx16 lahf_lm popcnt';
const V4_FLAGS = `${V3_FLAGS} avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni`;
const cpuinfo = (flags: string) => `processor\t: 0\nmodel name\t: test\nflags\t\t: ${flags}\n\nprocessor\t: 1\nflags\t\t: ${flags}\n`;

async function packageRoot(t: ExecutionContext, files: Record<string, string>): Promise<string> {
  const root = await tempDir(t, 'eigenlorax-loader-');
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(root, name)), { recursive: true });
    writeFileSync(path.join(root, name), text);
  }
  return root;
}

test('cpuLevels reads the x86-64 baselines from /proc/cpuinfo flags', (t) => {
  t.deepEqual(cpuLevels(cpuinfo(V4_FLAGS)), ['x86-64-v4', 'x86-64-v3', 'x86-64-v2', 'x86-64']);
  // AVX-512F alone (Knights Landing: no BW, DQ, VL) is not v4.
  t.deepEqual(cpuLevels(cpuinfo(`${V3_FLAGS} avx512f avx512cd`)), ['x86-64-v3', 'x86-64-v2', 'x86-64']);
  t.deepEqual(cpuLevels(cpuinfo(V3_FLAGS)), ['x86-64-v3', 'x86-64-v2', 'x86-64']);
  t.deepEqual(cpuLevels(cpuinfo(V2_FLAGS)), ['x86-64-v2', 'x86-64']);
  // AVX2 without BMI2 (some early or virtualised CPUs) is not v3.
  t.deepEqual(cpuLevels(cpuinfo(V3_FLAGS.replace(' bmi2', ''))), ['x86-64-v2', 'x86-64']);
  t.deepEqual(cpuLevels(''), ['x86-64']);
});

test('prebuiltCandidates keeps the files that fit, best baseline first', async (t) => {
  const dir = await packageRoot(t, {
    'eigenlorax.napi.glibc.x86-64-v2.node': '',
    'eigenlorax.napi.glibc.x86-64-v3.node': '',
    'eigenlorax.napi.musl.x86-64-v3.node': '',
    'eigenlorax.napi.glibc.x86-64-v4.node': '',
    'eigenlorax.node': '', // no napi tag: not a prebuilt
    'other.napi.glibc.x86-64-v2.node': '',
    'eigenlorax_cuda.so': '',
  });
  const names = (machine: { napi: number; libc: string; levels: string[] }) =>
    prebuiltCandidates(dir, machine).map((c) => `${path.basename(c.path)} ${c.kind}`);
  const v3 = cpuLevels(cpuinfo(V3_FLAGS));
  t.deepEqual(names({ napi: 9, libc: 'glibc', levels: v3 }), [
    'eigenlorax.napi.glibc.x86-64-v3.node prebuilt x86-64-v3',
    'eigenlorax.napi.glibc.x86-64-v2.node prebuilt x86-64-v2',
  ]);
  t.deepEqual(names({ napi: 9, libc: 'glibc', levels: cpuLevels(cpuinfo(V4_FLAGS)) }), [
    'eigenlorax.napi.glibc.x86-64-v4.node prebuilt x86-64-v4',
    'eigenlorax.napi.glibc.x86-64-v3.node prebuilt x86-64-v3',
    'eigenlorax.napi.glibc.x86-64-v2.node prebuilt x86-64-v2',
  ]);
  t.deepEqual(names({ napi: 9, libc: 'glibc', levels: cpuLevels(cpuinfo(V2_FLAGS)) }), ['eigenlorax.napi.glibc.x86-64-v2.node prebuilt x86-64-v2']);
  t.deepEqual(names({ napi: 9, libc: 'musl', levels: v3 }), ['eigenlorax.napi.musl.x86-64-v3.node prebuilt x86-64-v3']);
  t.deepEqual(names({ napi: ADDON_NAPI_VERSION - 1, libc: 'glibc', levels: v3 }), [], 'a Node-API older than the addon needs');
  t.deepEqual(names({ napi: 9, libc: 'glibc', levels: ['x86-64'] }), []);
  t.deepEqual(prebuiltCandidates(path.join(dir, 'missing')), []);
});

test('addonCandidates: EIGENLORAX_ADDON alone, else the source build before the prebuilt ones', async (t) => {
  const platform = `${process.platform}-${process.arch}`;
  const root = await packageRoot(t, { 'build/Release/eigenlorax.node': '', [`prebuilds/${platform}/eigenlorax.napi.node`]: '' });
  t.deepEqual(addonCandidates(root, { EIGENLORAX_ADDON: 'x/y.node' }), [{ path: path.resolve('x/y.node'), kind: 'EIGENLORAX_ADDON' }]);
  t.deepEqual(
    addonCandidates(root, {}).map((c) => c.kind),
    ['source', `prebuilt ${platform}`],
  );
  const prebuiltOnly = await packageRoot(t, { [`prebuilds/${platform}/eigenlorax.napi.node`]: '' });
  t.deepEqual(addonCandidates(prebuiltOnly, {}), [{ path: path.join(prebuiltOnly, 'prebuilds', platform, 'eigenlorax.napi.node'), kind: `prebuilt ${platform}` }]);
});

test('loadAddon falls back to a prebuilt binary when the source build does not load, and names every failure', async (t) => {
  const platform = `${process.platform}-${process.arch}`;
  const root = await packageRoot(t, { 'build/Release/eigenlorax.node': 'not a shared object' });
  mkdirSync(path.join(root, 'prebuilds', platform), { recursive: true });
  // The addon this process already uses, as the one prebuilt binary (a link: the same module).
  symlinkSync(buildInfo().binary, path.join(root, 'prebuilds', platform, 'eigenlorax.napi.node'));
  const saved = process.env.EIGENLORAX_ADDON;
  delete process.env.EIGENLORAX_ADDON;
  try {
    const loaded = loadAddon<{ buildInfo(): { version: string } }>(root, import.meta.url);
    t.is(loaded.kind, `prebuilt ${platform}`);
    t.is(loaded.addon.buildInfo().version, buildInfo().version);
    const broken = await packageRoot(t, { 'build/Release/eigenlorax.node': 'not a shared object' });
    const error = t.throws(() => loadAddon(broken, import.meta.url));
    t.regex(error.message, /source .*build\/Release\/eigenlorax\.node: /);
    const empty = await packageRoot(t, {});
    t.regex(t.throws(() => loadAddon(empty, import.meta.url)).message, /no source build at .* and no prebuilt binary for /);
  } finally {
    if (saved !== undefined) process.env.EIGENLORAX_ADDON = saved;
  }
});

test('buildInfo says which binary is in use', (t) => {
  const info = buildInfo();
  t.is(info.binary, info.addonPath);
  t.true(existsSync(info.binary), info.binary);
  if (process.env.EIGENLORAX_ADDON) t.is(info.binaryKind, 'EIGENLORAX_ADDON');
  else t.regex(info.binaryKind, /^(source|prebuilt .+)$/);
});

test('EigenLoraxError takes only declared codes', (t) => {
  // @ts-expect-error: 'ERR_NOT_A_CODE' is not an ErrorCode (tsc fails if this compiles).
  const error = new EigenLoraxError('message', 'ERR_NOT_A_CODE');
  t.is(error.code as string, 'ERR_NOT_A_CODE');
  t.is(new EigenLoraxError('stopped', 'ERR_ABORTED').code, 'ERR_ABORTED');
});
