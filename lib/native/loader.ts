/**
 * Which addon binary to load, node-gyp-build style: $EIGENLORAX_ADDON when set; else the
 * source build (build/Release, present only when the install compiled it: a development
 * checkout, a forced source build, or no prebuilt that fits); else the prebuilt binaries
 * shipped in prebuilds/<platform>-<arch>/ that fit this machine, best CPU baseline first.
 *
 * Node builtins only: scripts/install.mjs imports the compiled file to pick the same
 * binary the library will load, before anything else of the package can run.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

/** The Node-API version the addon is compiled for (NAPI_VERSION in CMakeLists.txt, binary.napi_versions in package.json). */
export const ADDON_NAPI_VERSION = 8;

export type BinaryKind = 'EIGENLORAX_ADDON' | 'source' | `prebuilt ${string}`;

export interface AddonCandidate {
  path: string;
  kind: BinaryKind;
}

export interface LoadedAddon<T> {
  addon: T;
  path: string;
  kind: BinaryKind;
}

/** x86-64 micro-architecture levels, best first, with the /proc/cpuinfo flags each needs. */
const V3_FLAGS = ['avx', 'avx2', 'bmi1', 'bmi2', 'f16c', 'fma', 'movbe'];
const X64_LEVELS: ReadonlyArray<{ level: string; flags: readonly string[] }> = [
  // v4: AVX-512 (F, BW, CD, DQ, VL) on top of v3; the rsvd's product kernels need it.
  { level: 'x86-64-v4', flags: [...V3_FLAGS, 'avx512f', 'avx512bw', 'avx512cd', 'avx512dq', 'avx512vl'] },
  // lzcnt ("abm") is left out: every CPU with AVX2 has it, and some hypervisors hide the flag.
  { level: 'x86-64-v3', flags: V3_FLAGS },
  { level: 'x86-64-v2', flags: ['cx16', 'lahf_lm', 'popcnt', 'sse4_1', 'sse4_2', 'ssse3'] },
  { level: 'x86-64', flags: [] },
];

/** The x86-64 levels this CPU runs, best first (just the baseline when /proc/cpuinfo cannot be read). */
export function cpuLevels(cpuinfo?: string): string[] {
  let text = cpuinfo;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/cpuinfo', 'utf8');
    } catch {
      text = '';
    }
  }
  const line = /^flags\s*:(.*)$/m.exec(text);
  const flags = new Set((line?.[1] ?? '').trim().split(/\s+/));
  return X64_LEVELS.filter(({ flags: needed }) => needed.every((flag) => flags.has(flag))).map(({ level }) => level);
}

/** 'glibc', 'musl', or '' off Linux. Reads ldd first, as detect-libc does: a process report is slower. */
export function libc(): string {
  if (process.platform !== 'linux') return '';
  try {
    const ldd = readFileSync('/usr/bin/ldd', 'latin1');
    if (ldd.includes('musl')) return 'musl';
    if (ldd.includes('GNU C Library') || ldd.includes('GLIBC')) return 'glibc';
  } catch {
    // no ldd script: ask the process report below
  }
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return report?.header?.glibcVersionRuntime ? 'glibc' : 'musl';
}

interface Machine {
  napi: number;
  libc: string;
  levels: string[];
}

/**
 * Prebuilt binaries in `dir` that fit this machine, best first. File names carry their
 * tags as node-gyp-build's do: eigenlorax.napi.glibc.x86-64-v3.node.
 */
export function prebuiltCandidates(dir: string, given?: Machine): AddonCandidate[] {
  if (!existsSync(dir)) return [];
  const machine = given ?? { napi: Number(process.versions.napi), libc: libc(), levels: cpuLevels() };
  if (!(machine.napi >= ADDON_NAPI_VERSION)) return [];
  const found: Array<AddonCandidate & { rank: number }> = [];
  for (const name of readdirSync(dir)) {
    const match = /^eigenlorax\.(.+)\.node$/.exec(name);
    if (!match) continue;
    const tags = (match[1] ?? '').split('.');
    if (!tags.includes('napi')) continue;
    const fileLibc = tags.find((tag) => tag === 'glibc' || tag === 'musl');
    if (fileLibc !== undefined && fileLibc !== machine.libc) continue;
    const level = tags.find((tag) => tag.startsWith('x86-64'));
    const rank = level === undefined ? machine.levels.length : machine.levels.indexOf(level);
    if (rank < 0) continue;
    found.push({ path: path.join(dir, name), kind: `prebuilt ${level ?? `${process.platform}-${process.arch}`}`, rank });
  }
  return found.sort((a, b) => a.rank - b.rank).map(({ path: file, kind }) => ({ path: file, kind }));
}

/** The binaries to try, in order. */
export function addonCandidates(packageRoot: string, env: NodeJS.ProcessEnv = process.env): AddonCandidate[] {
  if (env.EIGENLORAX_ADDON) return [{ path: path.resolve(env.EIGENLORAX_ADDON), kind: 'EIGENLORAX_ADDON' }];
  const source = path.join(packageRoot, 'build', 'Release', 'eigenlorax.node');
  const candidates: AddonCandidate[] = existsSync(source) ? [{ path: source, kind: 'source' }] : [];
  candidates.push(...prebuiltCandidates(path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`)));
  return candidates;
}

/**
 * Loads the first candidate that loads. Throws a plain Error naming every attempt (the
 * caller wraps it in its typed error); `source` is where a source build would land.
 */
export function loadAddon<T>(packageRoot: string, requireFrom: string): LoadedAddon<T> {
  const require = createRequire(requireFrom);
  const candidates = addonCandidates(packageRoot);
  const failures: string[] = [];
  for (const candidate of candidates) {
    try {
      return { addon: require(candidate.path) as T, ...candidate };
    } catch (cause) {
      failures.push(`${candidate.kind} ${candidate.path}: ${(cause as Error).message.split('\n')[0]}`);
    }
  }
  const source = path.join(packageRoot, 'build', 'Release', 'eigenlorax.node');
  const tried = failures.length > 0 ? `tried ${failures.join('; ')}` : `no source build at ${source} and no prebuilt binary for ${process.platform}-${process.arch} (Node-API ${process.versions.napi}, ${libc() || 'unknown libc'}, CPU ${cpuLevels()[0] ?? 'unknown'})`;
  throw new Error(tried);
}
