/**
 * Issue 13, defects 3-6 and 8 (last sentence): files that are not regular files, folders
 * written all-or-nothing (a writer killed between the renames, a torn pair), temporary
 * files of killed writers, content digests, duplicate header keys.
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  EigenLoraxError,
  buildSubspace,
  inspectAdapter,
  loadAdapter,
  loadCoefficients,
  loadSubspace,
  openSafetensors,
  saveAdapter,
  saveCoefficients,
  saveSubspace,
  writeSafetensors,
  type ErrorCode,
  type LoraAdapter,
} from '../lib/index.js';
import { Linear, loadCheckpoint, Sequential, trainModel } from '../lib/train/index.js';
import { DATA_DIGEST_KEY } from '../lib/io/digest.js';
import { cleanStaleTemporaries, ioError } from '../lib/io/files.js';
import { basePeftConfig, peftTensors, tempDir, writePeft } from './helpers/adapter-fixtures.js';
import { safetensorsBytes } from './helpers/safetensors-fixtures.js';
import { memoryAdapter, plantedBases, plantedFactors } from './helpers/subspace-fixtures.js';
import { blobs } from './helpers/train-fixtures.js';

const here = path.dirname(fileURLToPath(import.meta.url));

async function refused(t: ExecutionContext, call: () => Promise<unknown>, code: ErrorCode, mentions: string[] = []): Promise<void> {
  const error = await t.throwsAsync(call, { instanceOf: EigenLoraxError });
  t.is(error?.code, code, error?.message);
  for (const m of mentions) t.true(error?.message.includes(m), `message should mention ${JSON.stringify(m)}: ${error?.message}`);
}

/** A process id that no longer exists: a child that has exited. */
function deadPid(): number {
  const out = execFileSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
  return Number(String(out));
}

function adapterWithAlpha(alpha: number): LoraAdapter {
  const bases = plantedBases(6, 5, 2, 2, 3);
  return memoryAdapter([{ name: 'model.layers.0.q_proj', ...plantedFactors(bases, 2, 5, 0.2), alpha }]);
}

async function subspaceOf(seed: number) {
  const bases = plantedBases(6, 5, 2, 2, seed);
  const adapters = [0, 1, 2].map((i) => memoryAdapter([{ name: 'fc1', ...plantedFactors(bases, 2, seed + i, 0.2), alpha: 1 + i }]));
  return buildSubspace(adapters, { components: 2, seed: 1, hashSources: false, names: ['a', 'b', 'c'] });
}

/** Runs `script` (ES module source) in a child Node process; resolves with its exit signal. */
function runChild(script: string): Promise<{ signal: NodeJS.Signals | null; code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { cwd: here, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += String(d)));
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve({ code, signal, stderr }));
  });
}

const libUrl = (file: string) => JSON.stringify(new URL(`../lib/${file}`, import.meta.url).href);

// ---------------------------------------------------------------------------------------
// Not regular files

test('a FIFO, a device or a socket in place of a weights file is an ERR_IO naming it, without blocking', async (t) => {
  const dir = await tempDir(t);
  const fifo = path.join(dir, 'f.safetensors');
  execFileSync('mkfifo', [fifo]);
  const started = performance.now();
  await refused(t, () => openSafetensors(fifo), 'ERR_IO', [fifo, 'FIFO']);
  await refused(t, () => inspectAdapter(fifo), 'ERR_IO', [fifo]);
  await refused(t, () => loadCoefficients(fifo), 'ERR_IO', [fifo]);
  await refused(t, () => openSafetensors('/dev/zero'), 'ERR_IO', ['/dev/zero', 'device']);
  t.true(performance.now() - started < 5000);
  // Inside a PEFT folder: the weights and the config, each reported as what it is, not "not found".
  const peft = path.join(dir, 'peft');
  await writePeft(peft, peftTensors([{ name: 'model.layers.0.q_proj', rank: 2, in: 4, out: 4 }]), basePeftConfig());
  await copyFile(path.join(peft, 'adapter_config.json'), path.join(dir, 'config.json'));
  execFileSync('rm', [path.join(peft, 'adapter_model.safetensors')]);
  execFileSync('mkfifo', [path.join(peft, 'adapter_model.safetensors')]);
  await refused(t, () => loadAdapter(peft), 'ERR_IO', [path.join(peft, 'adapter_model.safetensors'), 'FIFO']);
  const peft2 = path.join(dir, 'peft2');
  await writePeft(peft2, peftTensors([{ name: 'model.layers.0.q_proj', rank: 2, in: 4, out: 4 }]), basePeftConfig());
  execFileSync('rm', [path.join(peft2, 'adapter_config.json')]);
  execFileSync('mkfifo', [path.join(peft2, 'adapter_config.json')]);
  await refused(t, () => loadAdapter(peft2), 'ERR_IO', [path.join(peft2, 'adapter_config.json'), 'FIFO']);
  // A subspace sidecar that is a FIFO.
  const sub = path.join(dir, 'sub');
  await saveSubspace(await subspaceOf(3), sub);
  execFileSync('rm', [path.join(sub, 'subspace.json')]);
  execFileSync('mkfifo', [path.join(sub, 'subspace.json')]);
  await refused(t, () => loadSubspace(sub), 'ERR_IO', ['subspace.json', 'FIFO']);
});

test('permission and read-only file-system failures are ERR_IO, not ERR_NOT_FOUND', (t) => {
  for (const code of ['EROFS', 'EACCES', 'EPERM']) {
    const cause = Object.assign(new Error(`${code}: denied`), { code });
    const error = ioError(cause, '/x/y', 'write');
    t.is(error.code, 'ERR_IO', code);
    t.true(error.message.includes('/x/y'));
  }
  t.is(ioError(Object.assign(new Error('ENOENT'), { code: 'ENOENT' }), '/x', 'read').code, 'ERR_NOT_FOUND');
});

// ---------------------------------------------------------------------------------------
// Folders all-or-nothing

test('a PEFT save killed between the two renames leaves the old adapter, read back consistent', async (t) => {
  const dir = path.join(await tempDir(t), 'adapter');
  await saveAdapter(adapterWithAlpha(8), dir, { format: 'peft' });
  const script = `
    import { atomicWriteHooks } from ${libUrl('io/files.js')};
    import { saveAdapter } from ${libUrl('index.js')};
    import { memoryAdapter, plantedBases, plantedFactors } from ${JSON.stringify(new URL('./helpers/subspace-fixtures.js', import.meta.url).href)};
    atomicWriteHooks.afterMoveOld = () => process.kill(process.pid, 'SIGKILL');
    const bases = plantedBases(6, 5, 2, 2, 3);
    await saveAdapter(memoryAdapter([{ name: 'model.layers.0.q_proj', ...plantedFactors(bases, 2, 5, 0.2), alpha: 32 }]), ${JSON.stringify(dir)}, { format: 'peft' });
    process.exit(3);
  `;
  const child = await runChild(script);
  t.is(child.signal, 'SIGKILL', child.stderr);
  // The folder is missing now: the reader restores the old version, whole.
  const back = await loadAdapter(dir);
  t.is(back.modules.get('model.layers.0.q_proj')?.alpha, 8);
  t.deepEqual((await readdir(path.dirname(dir))).sort(), ['adapter']);
  // And a later save succeeds and leaves nothing behind.
  await saveAdapter(adapterWithAlpha(32), dir, { format: 'peft' });
  t.is((await loadAdapter(dir)).modules.get('model.layers.0.q_proj')?.alpha, 32);
  t.deepEqual((await readdir(path.dirname(dir))).sort(), ['adapter']);
});

test('a subspace save killed between the renames leaves the old subspace loadable', async (t) => {
  const dir = path.join(await tempDir(t), 'sub');
  const old = await subspaceOf(3);
  await saveSubspace(old, dir);
  const script = `
    import { atomicWriteHooks } from ${libUrl('io/files.js')};
    import { buildSubspace, saveSubspace } from ${libUrl('index.js')};
    import { memoryAdapter, plantedBases, plantedFactors } from ${JSON.stringify(new URL('./helpers/subspace-fixtures.js', import.meta.url).href)};
    const bases = plantedBases(6, 5, 2, 2, 9);
    const adapters = [0, 1, 2].map((i) => memoryAdapter([{ name: 'fc1', ...plantedFactors(bases, 2, 9 + i, 0.2), alpha: 1 + i }]));
    const s = await buildSubspace(adapters, { components: 2, seed: 1, hashSources: false, names: ['a', 'b', 'c'] });
    atomicWriteHooks.afterMoveOld = () => process.kill(process.pid, 'SIGKILL');
    await saveSubspace(s, ${JSON.stringify(dir)});
    process.exit(3);
  `;
  const child = await runChild(script);
  t.is(child.signal, 'SIGKILL', child.stderr);
  t.is((await loadSubspace(dir)).id, old.id);
});

test('a torn PEFT pair (weights of one save, config of another) is refused, never loaded with the wrong scale', async (t) => {
  const root = await tempDir(t);
  await saveAdapter(adapterWithAlpha(8), path.join(root, 'a'), { format: 'peft' });
  await saveAdapter(adapterWithAlpha(32), path.join(root, 'b'), { format: 'peft' });
  await copyFile(path.join(root, 'b', 'adapter_model.safetensors'), path.join(root, 'a', 'adapter_model.safetensors'));
  await refused(t, () => loadAdapter(path.join(root, 'a')), 'ERR_ADAPTER_CONFIG', [path.join(root, 'a', 'adapter_config.json'), 'two different saves']);
  // Adapters from other tools (no digest) load as before.
  const plain = path.join(root, 'plain');
  await writePeft(plain, peftTensors([{ name: 'model.layers.0.q_proj', rank: 2, in: 4, out: 4 }]), { ...basePeftConfig(), r: 2 });
  t.truthy(await loadAdapter(plain));
});

test('a save into a folder holding other files keeps them; one holding a subfolder is written file by file', async (t) => {
  const root = await tempDir(t);
  const dir = path.join(root, 'a');
  await saveAdapter(adapterWithAlpha(8), dir, { format: 'peft' });
  await writeFile(path.join(dir, 'README.md'), 'mine');
  await saveAdapter(adapterWithAlpha(32), dir, { format: 'peft' });
  t.is(await readFile(path.join(dir, 'README.md'), 'utf8'), 'mine');
  t.is((await loadAdapter(dir)).modules.get('model.layers.0.q_proj')?.alpha, 32);
  await mkdir(path.join(dir, 'checkpoint-1'));
  await saveAdapter(adapterWithAlpha(16), dir, { format: 'peft' });
  t.is((await loadAdapter(dir)).modules.get('model.layers.0.q_proj')?.alpha, 16);
  t.deepEqual((await readdir(dir)).sort(), ['README.md', 'adapter_config.json', 'adapter_model.safetensors', 'checkpoint-1']);
  t.deepEqual(await readdir(root), ['a']);
});

// ---------------------------------------------------------------------------------------
// Temporary files

test('temporaries of dead writers are removed by the next write; a live writer\'s are kept', async (t) => {
  const dir = await tempDir(t);
  const dead = deadPid();
  const stale = [`.x.safetensors.${dead}-0123456789ab.tmp`, `.sub.${dead}-0123456789ab.staging`];
  const live = `.x.safetensors.${process.pid}-0123456789ab.tmp`;
  await writeFile(path.join(dir, stale[0]!), 'partial');
  await mkdir(path.join(dir, stale[1]!));
  await writeFile(path.join(dir, live), 'in progress');
  await writeFile(path.join(dir, '.not-ours.tmp'), 'x');
  await writeSafetensors(path.join(dir, 'y.safetensors'), [{ name: 't', shape: [2], data: new Float32Array([1, 2]) }]);
  t.deepEqual((await readdir(dir)).sort(), [live, '.not-ours.tmp', 'y.safetensors'].sort());
});

test('a writer killed in the middle of a file leaves at most its temporary, which the next write removes', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'big.safetensors');
  const script = `
    import { writeSafetensors } from ${libUrl('index.js')};
    let n = 0;
    const data = () => { if (++n === 3) process.kill(process.pid, 'SIGKILL'); return new Float32Array(1 << 18).fill(n); };
    await writeSafetensors(${JSON.stringify(file)}, Array.from({ length: 6 }, (_, i) => ({ name: 't' + i, shape: [1 << 18], data })));
  `;
  const child = await runChild(script);
  t.is(child.signal, 'SIGKILL', child.stderr);
  const left = await readdir(dir);
  t.is(left.length, 1);
  t.regex(left[0]!, /^\.big\.safetensors\.\d+-[0-9a-f]{12}\.tmp$/);
  await writeSafetensors(file, [{ name: 't', shape: [1], data: new Float32Array([1]) }]);
  t.deepEqual(await readdir(dir), ['big.safetensors']);
  await cleanStaleTemporaries(path.join(dir, 'missing')); // a missing folder is not an error
});

// ---------------------------------------------------------------------------------------
// Content digests

/** Flips `count` seeded random bytes in the data section of a copy of `file`, one copy per flip; yields each copy. */
async function* flipped(file: string, count: number, seed: number): AsyncGenerator<string> {
  const bytes = await readFile(file);
  const dataStart = 8 + Number(bytes.readBigUInt64LE(0));
  let s = seed;
  const next = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0);
  for (let i = 0; i < count; i++) {
    const changed = Buffer.from(bytes);
    const at = dataStart + (next() % (bytes.length - dataStart));
    changed[at] = changed[at]! ^ (1 + (next() % 255));
    await writeFile(file, changed);
    yield `byte ${at}`;
  }
  await writeFile(file, bytes);
}

test('coefficients, subspace and checkpoint files carry a digest; 30 byte flips in the data are all refused (ERR_INTEGRITY)', async (t) => {
  const dir = await tempDir(t);
  const subspace = await subspaceOf(3);
  const sub = path.join(dir, 'sub');
  await saveSubspace(subspace, sub);
  const coefficients = path.join(dir, 'c.safetensors');
  await saveCoefficients(subspace.coefficients[0]!, coefficients);
  const checkpoint = path.join(dir, 'ckpt.safetensors');
  const model = new Sequential([Linear.create('fc1', 10, 3, { seed: 1 })]);
  await trainModel(model, { train: blobs(40, 10, 3, 1) }, { epochs: 1, batchSize: 20, checkpoint: { path: checkpoint }, progress: false });
  for (const [file, load] of [
    [coefficients, () => loadCoefficients(coefficients, subspace)],
    [path.join(sub, 'subspace.safetensors'), () => loadSubspace(sub)],
    [checkpoint, () => loadCheckpoint(checkpoint)],
  ] as const) {
    const reader = await openSafetensors(file);
    t.regex(reader.metadata[DATA_DIGEST_KEY] ?? '', /^[0-9a-f]{64}$/, file);
    await reader.close();
    await load();
    for await (const where of flipped(file, 30, 77)) await refused(t, load, 'ERR_INTEGRITY', [file]).then(() => t.log === undefined || where);
    await load();
  }
});

test('a file without a digest (older, or another tool\'s) is read unchecked', async (t) => {
  const dir = await tempDir(t);
  const subspace = await subspaceOf(3);
  const file = path.join(dir, 'c.safetensors');
  await saveCoefficients(subspace.coefficients[0]!, file);
  const reader = await openSafetensors(file);
  const entries = await Promise.all([...reader.tensors.keys()].map(async (name) => ({ name, ...(await reader.readFloat32(name)) })));
  const metadata = { ...reader.metadata };
  delete metadata[DATA_DIGEST_KEY];
  await reader.close();
  await writeSafetensors(file, entries.map((e) => ({ name: e.name, shape: e.shape, data: e.data })), { metadata });
  const back = await loadCoefficients(file, subspace);
  t.is(back.subspaceId, subspace.id);
});

// ---------------------------------------------------------------------------------------
// Duplicate header keys

test('a safetensors header listing a key twice is refused naming the key', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'dup.safetensors');
  const header = '{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"u":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}';
  await writeFile(file, safetensorsBytes(header, new Uint8Array(8)));
  await refused(t, () => openSafetensors(file), 'ERR_SAFETENSORS_FORMAT', [file, '"t"', 'twice']);
  // Escaped spellings of the same key are the same key.
  const escaped = '{"\\u0074":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}';
  await writeFile(file, safetensorsBytes(escaped, new Uint8Array(4)));
  await refused(t, () => openSafetensors(file), 'ERR_SAFETENSORS_FORMAT', ['twice']);
});
