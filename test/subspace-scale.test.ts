/**
 * Subspaces at scale: the out-of-core build (a tiny memory budget) against the in-memory
 * one, sizes, sharded builds gathered byte for byte, gather's refusals, and the stored
 * bytes of the savings report. Seeds are fresh per run and in every message.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  EigenLoraxError,
  ShardMismatchError,
  analyzeAdapters,
  buildSubspace,
  meanRelativeError,
  projectAdapter,
  gatherShards,
  loadAdapter,
  parseSize,
  saveAdapter,
  writeBuildFolder,
  type AdapterCoefficients,
  type BuildSubspaceOptions,
  type LoraAdapter,
  type Subspace,
} from '../lib/index.js';
import { assignShards } from '../lib/subspace/shard-plan.js';
import { loadCoefficientsBundle } from '../lib/subspace/coefficients-file.js';
import { openSafetensors, writeSafetensors, type SafetensorsFloatEntry } from '../lib/io/safetensors.js';
import * as ops from '../lib/native/ops.js';
import { tempDir } from './helpers/safetensors-fixtures.js';
import { freshSeed } from './helpers/random.js';
import { memoryAdapter, plantedBases, plantedFactors } from './helpers/subspace-fixtures.js';

const D_IN = 96;
const D_OUT = 80;
const RANK = 8;
const MODULES = ['layers.0.q_proj', 'layers.0.v_proj', 'layers.1.q_proj', 'layers.1.v_proj', 'layers.2.q_proj'];

function zoo(seed: number, n: number, modules = MODULES): LoraAdapter[] {
  const planted = modules.map((_, m) => plantedBases(D_IN, D_OUT, 6, 6, seed + 101 * m));
  return Array.from({ length: n }, (_, i) =>
    memoryAdapter(
      modules.map((name, m) => {
        const f = plantedFactors(planted[m]!, RANK, seed + 1000 * i + m, 0.3);
        return { name, A: f.A, B: f.B, alpha: 16 + (i % 3) * 8 };
      }),
    ),
  );
}

const maxAbsDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);
const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

for (const [label, options] of [
  ['canonical + equal', {}],
  ['canonical + scale, centred', { weighting: 'scale', center: true }],
  ['raw', { stacking: 'raw' }],
] as Array<[string, BuildSubspaceOptions]>) {
  test(`out of core (${label}): a 1-byte budget streams every module and gives the in-memory results within f32 rounding`, async (t) => {
    const seed = freshSeed();
    const adapters = zoo(seed, 14, MODULES.slice(0, 2));
    const base = { ...options, components: 5, seed: seed % 1000, hashSources: false } as BuildSubspaceOptions;
    const inMemory = await buildSubspace(adapters, base);
    const streamed = await buildSubspace(adapters, { ...base, memoryBudget: 1 });
    t.deepEqual(inMemory.report!.streamedModules, [], `seed ${seed}`);
    t.deepEqual(streamed.report!.streamedModules, MODULES.slice(0, 2), `seed ${seed}`);
    // A component's sign is fixed by its largest-magnitude entry; where two entries of
    // opposite signs are equally large to rounding, the two builds may pick opposite signs
    // (seed 1301208191: one column of v_proj's B), and the loadings on it follow. Compare
    // with each column's sign aligned.
    const signs = new Map<string, { A: number[]; B: number[] }>();
    for (const [name, m] of inMemory.modules) {
      const s = streamed.modules.get(name)!;
      const aligned = { A: [] as number[], B: [] as number[] };
      signs.set(name, aligned);
      for (const side of ['A', 'B'] as const) {
        const c1 = m[`components${side}`];
        const c2 = Float32Array.from(s[`components${side}`].data);
        for (let j = 0; j < c1.cols; j++) {
          let dot = 0;
          for (let i = 0; i < c1.rows; i++) dot += c1.data[i * c1.cols + j]! * c2[i * c1.cols + j]!;
          aligned[side].push(dot < 0 ? -1 : 1);
          if (dot < 0) for (let i = 0; i < c1.rows; i++) c2[i * c1.cols + j]! *= -1;
        }
        t.true(maxAbsDiff(c1.data, c2) <= 2e-4, `seed ${seed} ${name} ${side}: components differ by ${maxAbsDiff(c1.data, c2)}`);
        const s1 = m[`singular${side}`];
        const s2 = s[`singular${side}`];
        t.true(maxAbsDiff(s1, s2) <= 1e-5 * maxAbs(s1), `seed ${seed} ${name} ${side}: singular values`);
        t.true(Math.abs(m[`energy${side}`] - s[`energy${side}`]) <= 1e-6 * m[`energy${side}`], `seed ${seed} ${name} ${side}: energy`);
        const mean1 = m[`mean${side}`];
        const mean2 = s[`mean${side}`];
        t.is(mean1 === null, mean2 === null);
        if (mean1 !== null) t.true(maxAbsDiff(mean1, mean2!) <= 1e-6 * (1 + maxAbs(mean1)), `seed ${seed}: mean ${side}`);
      }
    }
    inMemory.coefficients.forEach((c, i) => {
      const d = streamed.coefficients[i]!;
      for (const [name, m] of c.modules) {
        const n = d.modules.get(name)!;
        t.true(Math.abs(m.norm - n.norm) <= 1e-9 * m.norm, `seed ${seed}: adapter ${i} ${name} norm`);
        t.true(Math.abs(m.error - n.error) <= 1e-3 * m.norm, `seed ${seed}: adapter ${i} ${name} error ${m.error} vs ${n.error}`);
        const flip = signs.get(name)!.A;
        const alpha = n.alpha.data.map((v, e) => v * flip[Math.floor(e / n.alpha.cols)]!);
        t.true(maxAbsDiff(m.alpha.data, alpha) <= 1e-3 * (1 + maxAbs(m.alpha.data)), `seed ${seed}: alpha`);
      }
    });
  });
}

test('out of core: a budget between the modules streams only the larger ones; small stacks (exact SVD) stay in memory', async (t) => {
  const seed = freshSeed();
  const adapters = zoo(seed, 14, MODULES.slice(0, 1));
  const bytes = 16 * 14 * RANK * (D_IN + D_OUT); // inMemoryModuleBytes
  const fits = await buildSubspace(adapters, { components: 5, hashSources: false, memoryBudget: bytes });
  t.deepEqual(fits.report!.streamedModules, [], `seed ${seed}`);
  const over = await buildSubspace(adapters, { components: 5, hashSources: false, memoryBudget: bytes - 1 });
  t.deepEqual(over.report!.streamedModules, MODULES.slice(0, 1), `seed ${seed}`);
  // 3 adapters: 24 rows <= 2 (K + p): rsvd's exact path, which the stream does not repeat.
  const small = await buildSubspace(adapters.slice(0, 3), { components: 5, hashSources: false, memoryBudget: 1 });
  t.deepEqual(small.report!.streamedModules, [], `seed ${seed}`);
});

test('parseSize: bytes and units; anything else is ERR_INVALID_ARGUMENT naming the option', (t) => {
  t.is(parseSize(1024), 1024);
  t.is(parseSize('512MB'), 512e6);
  t.is(parseSize('4 GB'), 4e9);
  t.is(parseSize('1.5GiB'), 1.5 * 2 ** 30);
  t.is(parseSize('64kib'), 65536);
  t.is(parseSize('100'), 100);
  for (const bad of [0, -1, 1.5, '', 'lots', '5 parsecs', '-3MB', null, {}]) {
    t.throws(() => parseSize(bad, 'options.memoryBudget'), { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT', message: /options\.memoryBudget/ });
  }
  return buildSubspace([], { memoryBudget: 'a lot' }).then(
    () => t.fail(),
    (e: EigenLoraxError) => t.regex(e.message, /options\.memoryBudget/),
  );
});

test('assignShards: balanced by cost, deterministic, every module once', (t) => {
  const modules = [
    { name: 'a', cost: 10 },
    { name: 'b', cost: 7 },
    { name: 'c', cost: 6 },
    { name: 'd', cost: 5 },
    { name: 'e', cost: 1 },
  ];
  const split = assignShards(modules, 2);
  t.deepEqual([...split].sort(), [['a', 0], ['b', 1], ['c', 1], ['d', 0], ['e', 1]].sort() as Array<[string, number]>);
  t.deepEqual(assignShards([...modules].reverse(), 2), split);
});

async function writeZoo(dir: string, adapters: LoraAdapter[], dtypes: ReadonlyArray<'BF16' | 'F16' | 'F32'> = ['BF16']): Promise<string[]> {
  const paths: string[] = [];
  for (let i = 0; i < adapters.length; i++) {
    const p = path.join(dir, `adapter-${i}`);
    await saveAdapter(adapters[i]!, p, { format: 'peft', dtype: dtypes[i % dtypes.length]! });
    paths.push(p);
  }
  return paths;
}

async function filesOf(dir: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out.set(path.relative(dir, p), await readFile(p));
    }
  };
  await walk(dir);
  return out;
}

test('sharded builds gathered are byte-identical to the one-machine build; the stored-bytes report says the dtypes', async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const paths = await writeZoo(dir, zoo(seed, 6));
  const options: BuildSubspaceOptions = { components: 4, seed: 7 };
  const whole = await buildSubspace(paths, options);
  await writeBuildFolder(whole, path.join(dir, 'whole'));
  const shardDirs: string[] = [];
  const hashedBy = new Map<number, number>();
  for (let i = 0; i < 3; i++) {
    const shard = await buildSubspace(paths, { ...options, shard: `${i}/3` });
    t.is(shard.report!.shard!.count, 3);
    // Each shard hashes its share of the files (by size, so configs and weights spread
    // over the shards); the others it records with bytes and sha256 null.
    const hashed = shard.report!.shard!.hashed!;
    t.true(hashed.length > 0 && hashed.length < 12, `shard ${i} hashed ${hashed.length} of 12 files`);
    shard.sources.flatMap((src) => src.files).forEach((f, k) => {
      const mine = hashed.includes(k);
      if (mine) hashedBy.set(k, (hashedBy.get(k) ?? 0) + 1);
      t.is(f.sha256 === null, !mine, `shard ${i}, file ${k}`);
      t.is(f.bytes === null, !mine, `shard ${i}, file ${k}`);
    });
    shardDirs.push(path.join(dir, `shard-${i}`));
    await writeBuildFolder(shard, shardDirs[i]!);
  }
  t.deepEqual([...hashedBy.keys()].sort((a, b) => a - b), Array.from({ length: 12 }, (_, k) => k), 'every file hashed by a shard');
  t.true([...hashedBy.values()].every((c) => c === 1), 'no file hashed by two shards');
  const gathered = await gatherShards([...shardDirs].reverse(), path.join(dir, 'gathered'));
  t.is(gathered.id, whole.id, `seed ${seed}`);
  const a = await filesOf(path.join(dir, 'whole'));
  const b = await filesOf(path.join(dir, 'gathered'));
  t.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
  for (const [name, bytes] of a) t.true(bytes.equals(b.get(name)!), `seed ${seed}: ${name} differs`);

  const storage = whole.report!.storage!;
  t.deepEqual(storage.adapters.dtypes, ['BF16']);
  t.is(storage.adapters.bytes, 6 * MODULES.length * RANK * (D_IN + D_OUT) * 2);
  t.is(storage.coefficients.bytes, 6 * MODULES.length * (4 + 4) * RANK * 4);
  t.deepEqual(storage.basis.dtypes, ['F32']);
  t.is(storage.ratio, storage.adapters.bytes / (storage.basis.bytes + storage.coefficients.bytes));
});

test('factors read from files (by the native kernels where kept open, else into reused arenas): build and analyze equal those of the same adapters in memory, bit for bit', async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  // Modules of very different sizes, three in flight: arenas are taken, reused and replaced.
  const shapes = [
    ['layers.0.mlp.up_proj', 160, 48],
    ['layers.0.q_proj', 24, 40],
    ['layers.1.mlp.up_proj', 176, 64],
    ['layers.1.q_proj', 40, 24],
    ['layers.2.q_proj', 96, 80],
  ] as const;
  const planted = shapes.map(([, dOut, dIn], m) => plantedBases(dIn, dOut, 5, 5, seed + 101 * m));
  const adapters = Array.from({ length: 9 }, (_, i) =>
    memoryAdapter(shapes.map(([name], m) => ({ name, ...plantedFactors(planted[m]!, 4 + (i % 3), seed + 1000 * i + m, 0.2), alpha: 8 + i }))),
  );
  const paths = await writeZoo(dir, adapters, ['BF16', 'F16', 'F32']);
  const loaded = await Promise.all(paths.map((p) => loadAdapter(p)));
  // Four files kept open (the native kernels read those), five read here into arenas.
  const options: BuildSubspaceOptions = { components: 3, seed: 11, hashSources: false, concurrency: 3, maxOpenFiles: 4 };
  const fromFiles = await buildSubspace(paths, options);
  const inMemory = await buildSubspace(loaded, options);
  for (const [name, m] of inMemory.modules) {
    const f = fromFiles.modules.get(name)!;
    t.deepEqual(f.componentsA.data, m.componentsA.data, `seed ${seed}: ${name} A`);
    t.deepEqual(f.componentsB.data, m.componentsB.data, `seed ${seed}: ${name} B`);
  }
  fromFiles.coefficients.forEach((c, i) => {
    for (const [name, m] of inMemory.coefficients[i]!.modules) t.deepEqual(c.modules.get(name)!.alpha.data, m.alpha.data, `seed ${seed}: adapter ${i} ${name}`);
  });
  const figures = async (inputs: Parameters<typeof analyzeAdapters>[0]) => {
    const a = await analyzeAdapters(inputs, { components: 3, heldOut: 3, concurrency: 3, maxOpenFiles: 4 });
    return [a.heldOutError, a.perAdapter.map((p) => p.heldOutError)];
  };
  t.deepEqual(await figures(paths), await figures(loaded), `seed ${seed}`);
});

test('releaseScratch between the modules of builds in flight (as buildSubspace and analyzeAdapters call it at their end) changes no result', async (t) => {
  const seed = freshSeed();
  const adapters = zoo(seed, 12);
  const options: BuildSubspaceOptions = { components: 4, seed: seed % 1000, hashSources: false };
  const alone = await buildSubspace(adapters, options);
  const [a, , b] = await Promise.all([buildSubspace(adapters, options), ops.releaseScratch(), buildSubspace(adapters, { ...options, concurrency: 1 }), ops.releaseScratch()]);
  for (const other of [a, b]) {
    for (const [name, m] of alone.modules) t.deepEqual(other.modules.get(name)!.componentsA.data, m.componentsA.data, `seed ${seed}: ${name}`);
    other.coefficients.forEach((c, i) => {
      for (const [name, m] of alone.coefficients[i]!.modules) t.deepEqual(c.modules.get(name)!.alpha.data, m.alpha.data, `seed ${seed}: adapter ${i} ${name}`);
    });
  }
});

test('gatherShards refuses shards that do not make one build, naming the shard and field, and writes nothing', async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const paths = await writeZoo(dir, zoo(seed, 4, MODULES.slice(0, 3)));
  const write = async (name: string, options: BuildSubspaceOptions): Promise<string> => {
    const s: Subspace = await buildSubspace(paths, { components: 3, hashSources: true, ...options });
    const folder = path.join(dir, name);
    await writeBuildFolder(s, folder);
    return folder;
  };
  const s0 = await write('s0', { shard: { index: 0, count: 2 } });
  const s1 = await write('s1', { shard: { index: 1, count: 2 } });
  const otherSeed = await write('seed', { shard: { index: 1, count: 2 }, seed: 99 });
  const otherCount = await write('count', { shard: { index: 1, count: 3 } });
  const whole = await write('whole', {});
  const out = path.join(dir, 'out');
  const refuses = async (folders: string[], shard: string, field: RegExp) => {
    const e = await t.throwsAsync(gatherShards(folders, out), { instanceOf: ShardMismatchError, code: 'ERR_SHARD_MISMATCH' });
    t.is(e!.shard, shard);
    t.regex(e!.field, field);
    t.false(existsSync(out), 'nothing written');
  };
  await refuses([s0], s0, /^index$/);
  await refuses([s0, s0], s0, /^index$/);
  await refuses([s0, otherSeed], otherSeed, /^settings\.seed$/);
  await refuses([s0, otherCount], otherCount, /^count$/);
  await refuses([s0, whole], whole, /^shard\.json$/);
  // Shards with and without source hashing; source files hashed by no shard, or by two.
  const unhashed = await write('unhashed', { shard: { index: 1, count: 2 }, hashSources: false });
  await refuses([s0, unhashed], unhashed, /^hashed$/);
  const shardJson = path.join(s1, 'shard.json');
  const original = await readFile(shardJson, 'utf8');
  const rec = JSON.parse(original);
  const theirs = JSON.parse(await readFile(path.join(s0, 'shard.json'), 'utf8')).hashed as number[];
  await writeFile(shardJson, JSON.stringify({ ...rec, hashed: rec.hashed.slice(1) }));
  await refuses([s0, s1], s0, /^hashed$/);
  await writeFile(shardJson, JSON.stringify({ ...rec, hashed: [...rec.hashed, theirs[0]] }));
  await refuses([s0, s1], s1, /^hashed$/);
  await writeFile(shardJson, JSON.stringify({ ...rec, hashed: [...rec.hashed, 999] }));
  await refuses([s0, s1], s1, /^hashed$/);
  await writeFile(shardJson, original);
  // A source changed between the shards' builds: its sha256 differs.
  const record = JSON.parse(await readFile(path.join(s1, 'subspace.json'), 'utf8'));
  record.sources[0].files[0].sha256 = '0'.repeat(64);
  await writeFile(path.join(s1, 'subspace.json'), JSON.stringify(record, null, 2));
  await t.throwsAsync(gatherShards([s0, s1], out), { instanceOf: EigenLoraxError });
  t.false(existsSync(out));
  await t.throwsAsync(gatherShards([], out), { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT' });
});

test('a shard folder holds its coefficients in one bundle per 256 adapters, equal to the per-adapter files; gather refuses a bundle that does not hold what shard.json lists, whose tensors are not the loadings its records size, or whose bytes changed; a one-machine build over a shard folder leaves no bundle', async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const paths = await writeZoo(dir, zoo(seed, 5, MODULES.slice(0, 3)));
  const options: BuildSubspaceOptions = { components: 3, seed: 5 };
  const folders: string[] = [];
  const shards: Subspace[] = [];
  for (let i = 0; i < 2; i++) {
    shards.push(await buildSubspace(paths, { ...options, shard: { index: i, count: 2 } }));
    folders.push(path.join(dir, `s${i}`));
    await writeBuildFolder(shards[i]!, folders[i]!);
  }
  t.deepEqual(await readdir(path.join(folders[0]!, 'coefficients')), ['part-00000.safetensors']);
  const bundle = path.join(folders[0]!, 'coefficients', 'part-00000.safetensors');
  const loaded = await loadCoefficientsBundle(bundle, shards[0]!);
  t.is(loaded.length, 5);
  loaded.forEach((c, i) => {
    const want = shards[0]!.coefficients[i]!;
    t.is(c.adapter.name, want.adapter.name);
    t.deepEqual([...c.modules.keys()], [...want.modules.keys()]);
    for (const [name, m] of want.modules) {
      t.deepEqual(c.modules.get(name)!.alpha.data, m.alpha.data, `seed ${seed}: adapter ${i} ${name}`);
      t.deepEqual(c.modules.get(name)!.beta.data, m.beta.data);
      t.is(c.modules.get(name)!.error, m.error);
    }
    t.deepEqual(c.skipped, want.skipped);
  });
  // Against another subspace: refused as coefficients of another subspace are.
  await t.throwsAsync(loadCoefficientsBundle(bundle, shards[1]!), { code: 'ERR_SUBSPACE_MISMATCH' });
  // Adapter j's tensor `<j>` holds exactly the loadings its record sizes, and nothing else
  // is in the file (rewritten with the same records and a digest of their own).
  const written = await openSafetensors(bundle);
  const metadata: Record<string, string> = { ...written.metadata };
  delete metadata['eigenlorax.data_sha256'];
  const flats = await Promise.all([...written.tensors.keys()].map(async (name) => ({ name, data: (await written.readFloat32(name)).data.slice() })));
  await written.close();
  t.deepEqual(flats.map((f) => f.name).sort(), ['0', '1', '2', '3', '4']);
  const rewritten = async (name: string, edit: (entries: SafetensorsFloatEntry[]) => SafetensorsFloatEntry[]) => {
    const file = path.join(dir, name);
    await writeSafetensors(file, edit(flats.map((f) => ({ name: f.name, shape: [f.data.length], data: f.data }))), { metadata, digest: true });
    return file;
  };
  const short = await rewritten('short.safetensors', (e) => e.map((x) => (x.name === '2' ? { ...x, shape: [x.shape[0]! - 1], data: (x.data as Float32Array).subarray(1) } : x)));
  await t.throwsAsync(loadCoefficientsBundle(short, shards[0]!), { code: 'ERR_SUBSPACE_FORMAT', message: /tensor "2".*expected shape \[\d+\]/ });
  const extra = await rewritten('extra.safetensors', (e) => [...e, { name: '5', shape: [1], data: new Float32Array(1) }]);
  await t.throwsAsync(loadCoefficientsBundle(extra, shards[0]!), { code: 'ERR_SUBSPACE_FORMAT', message: /tensor "5".*unexpected tensor/ });

  const out = path.join(dir, 'out');
  const recordFile = path.join(folders[1]!, 'shard.json');
  const original = await readFile(recordFile, 'utf8');
  // shard.json splits the adapters over two bundles (a copy of the one written): the first
  // holds all five, not the two listed there.
  const record = JSON.parse(original) as { coefficients: Array<{ adapter: string; file: string }> };
  for (const c of record.coefficients.slice(2)) c.file = path.join('coefficients', 'part-00001.safetensors');
  await writeFile(recordFile, JSON.stringify(record));
  const coefficientsDir = path.join(folders[1]!, 'coefficients');
  await writeFile(path.join(coefficientsDir, 'part-00001.safetensors'), await readFile(path.join(coefficientsDir, 'part-00000.safetensors')));
  const split = await t.throwsAsync(gatherShards(folders, out), { instanceOf: ShardMismatchError });
  t.is(split!.field, 'coefficients');
  t.is(split!.shard, folders[1]!);
  t.regex(split!.message, /part-0000[01]\.safetensors holds the adapters .*, but shard\.json lists/);
  t.false(existsSync(out));
  await writeFile(recordFile, original);

  const other = path.join(folders[1]!, 'coefficients', 'part-00000.safetensors');
  const bytes = await readFile(other);
  bytes[bytes.length - 1]! ^= 0x01;
  await writeFile(other, bytes);
  await t.throwsAsync(gatherShards(folders, out), { code: 'ERR_INTEGRITY' });
  t.false(existsSync(out));

  const whole = await buildSubspace(paths, options);
  await writeBuildFolder(whole, folders[0]!);
  const names = await readdir(path.join(folders[0]!, 'coefficients'));
  t.is(names.length, 5);
  t.false(names.includes('part-00000.safetensors'));
  t.false(existsSync(path.join(folders[0]!, 'shard.json')));
});

test('a shard of 257 adapters writes two bundles (256 + 1), and gathering it alone gives the one-machine folder byte for byte', async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const adapters = zoo(seed, 257, MODULES.slice(0, 1));
  const options: BuildSubspaceOptions = { components: 3, seed: 2, hashSources: false };
  const shard = path.join(dir, 'shard');
  await writeBuildFolder(await buildSubspace(adapters, { ...options, shard: { index: 0, count: 1 } }), shard);
  t.deepEqual(await readdir(path.join(shard, 'coefficients')), ['part-00000.safetensors', 'part-00001.safetensors']);
  await writeBuildFolder(await buildSubspace(adapters, options), path.join(dir, 'whole'));
  await gatherShards([shard], path.join(dir, 'gathered'));
  const a = await filesOf(path.join(dir, 'whole'));
  const b = await filesOf(path.join(dir, 'gathered'));
  t.is(a.size, b.size);
  for (const [name, bytes] of a) t.true(bytes.equals(b.get(name)!), `seed ${seed}: ${name} differs`);
});

test('analyze: k-fold held-out error is that of projecting each fold on a basis built from the other folds (within 0.1%)', async (t) => {
  const seed = freshSeed();
  const adapters = zoo(seed, 7, MODULES.slice(0, 2));
  const options = { components: 4, seed: 3 } as const;
  const a = await analyzeAdapters(adapters, { ...options, heldOut: 3 });
  const held: AdapterCoefficients[] = new Array(adapters.length);
  for (let f = 0; f < 3; f++) {
    const others = adapters.filter((_, i) => i % 3 !== f);
    const basis = await buildSubspace(others, { ...options, hashSources: false });
    for (let i = f; i < adapters.length; i += 3) held[i] = await projectAdapter(basis, adapters[i]!, { missing: 'skip', hashSources: false });
  }
  const direct = meanRelativeError(held);
  // Above rsvd's exact threshold analyze approximates the fold bases (lib/subspace/folds.ts;
  // test/analyze-folds.test.ts bounds them against exact SVDs): close to these builds, not equal.
  t.true(Math.abs(a.heldOutError - direct) <= 1e-3 * direct, `seed ${seed}: ${a.heldOutError} vs ${direct}`);
  // 'auto' is leave-one-out up to 20 adapters.
  const auto = await analyzeAdapters(adapters.slice(0, 3), options);
  const loo = await analyzeAdapters(adapters.slice(0, 3), { ...options, heldOut: 'leave-one-out' });
  t.is(auto.heldOutError, loo.heldOutError, `seed ${seed}`);
  await t.throwsAsync(analyzeAdapters(adapters, { ...options, heldOut: 1 }), { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT', message: /options\.heldOut/ });
});
