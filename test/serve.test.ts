/**
 * `eigenlorax serve`: the served model (a batch where each row names its adapter equals
 * the float64 dense reference of the base with that adapter rebuilt as LoRA), the
 * micro-batcher, the served-model folder, the HTTP server (concurrent requests share a
 * batch and get the same numbers as alone; every bad request gets its status and a JSON
 * error naming the field; adapters come and go while requests are in flight; the server
 * keeps serving; loopback by default; a graceful close), and the command.
 *
 * Small random models and subspaces built here (no Fashion-MNIST): 12-10-8-4 with ReLU and
 * (tanh) GELU, a subspace over fc1 and fc2 (fc3 stays a plain Linear layer).
 */
import test, { type ExecutionContext } from 'ava';
import type { InjectOptions } from 'fastify';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  EigenLoraxError,
  buildSubspace,
  matrix,
  reconstructAdapter,
  saveCoefficients,
  type AdapterCoefficients,
  type LoraAdapter,
  type Matrix,
  type Subspace,
} from '../lib/index.js';
import { GELU, Linear, LoRA, ReLU, Sequential } from '../lib/train/index.js';
import {
  MicroBatcher,
  ServedModel,
  createServer,
  loadServedModel,
  startServer,
  writeServeFolder,
} from '../lib/serve/index.js';
import { DEFAULT_DEMO_OUT } from '../lib/demo/run.js';
import { DEFAULT_SERVE_FOLDER } from '../lib/serve/folder.js';
import { eigenlorax } from './helpers/cli.js';
import { freshSeed, randomMatrix } from './helpers/random.js';
import { denseDelta, memoryAdapter, plantedBases, plantedFactors } from './helpers/subspace-fixtures.js';
import { refGelu, refLinear, refRelu, tempDir } from './helpers/train-fixtures.js';

const WIDTHS = [12, 10, 8, 4];
const ADAPTED = ['fc1', 'fc2'];
const NAMES = ['alpha', 'bravo', 'charlie', 'delta', 'echo'];

function baseModel(seed: number): Sequential {
  return new Sequential([
    Linear.create('fc1', WIDTHS[0]!, WIDTHS[1]!, { seed, trainable: false }),
    new ReLU(),
    Linear.create('fc2', WIDTHS[1]!, WIDTHS[2]!, { seed: seed + 1, trainable: false }),
    // tanh GELU: the float64 reference has it in closed form (its erf series is only good for small inputs).
    new GELU('', { approximate: 'tanh' }),
    Linear.create('fc3', WIDTHS[2]!, WIDTHS[3]!, { seed: seed + 2, trainable: false }),
  ]);
}

/** LoRA adapters on fc1 and fc2 drawn near a planted subspace. */
function zoo(seed: number, count: number): LoraAdapter[] {
  const bases = ADAPTED.map((_, j) => plantedBases(WIDTHS[j]!, WIDTHS[j + 1]!, 3, 3, seed + 11 * j));
  return Array.from({ length: count }, (_, i) =>
    memoryAdapter(ADAPTED.map((name, j) => ({ name, ...plantedFactors(bases[j]!, 2, seed + 37 * i + j, 0.2), alpha: 1 + i }))),
  );
}

interface Fixture {
  base: Sequential;
  subspace: Subspace;
  byName: Map<string, AdapterCoefficients>;
  /** Each adapter rebuilt from its coefficients as LoRA factors. */
  rebuilt: Map<string, LoraAdapter>;
}

async function fixture(seed: number): Promise<Fixture> {
  const base = baseModel(seed);
  const subspace = await buildSubspace(zoo(seed, NAMES.length), { components: 3, seed: 1, hashSources: false, names: NAMES });
  const byName = new Map(NAMES.map((n, i) => [n, subspace.coefficients[i]!]));
  const rebuilt = new Map<string, LoraAdapter>();
  for (const [n, c] of byName) rebuilt.set(n, await reconstructAdapter(subspace, c));
  return { base, subspace, byName, rebuilt };
}

async function servedModel(f: Fixture, names: readonly string[] = NAMES): Promise<ServedModel> {
  const model = new ServedModel(f.base, f.subspace, { capacity: 2 });
  for (const n of names) await model.register(n, f.byName.get(n)!);
  return model;
}

/** One row through the base with `adapter` merged densely (W + s B A), all in float64. */
function reference(f: Fixture, adapter: string | null, row: ArrayLike<number>): Float64Array {
  let h: Float64Array = Float64Array.from(row);
  let width = h.length;
  const lora = adapter === null ? null : f.rebuilt.get(adapter)!;
  for (const layer of f.base.layers) {
    if (layer instanceof Linear) {
      const W = Float64Array.from(layer.weight.data);
      const m = lora?.modules.get(layer.name);
      if (m !== undefined) {
        const dW = denseDelta(m.A, m.B, m.scale);
        for (let i = 0; i < W.length; i++) W[i]! += dW.data[i]!;
      }
      h = refLinear(h, 1, width, W, layer.outFeatures, layer.bias === null ? null : Float64Array.from(layer.bias));
      width = layer.outFeatures;
    } else if (layer instanceof ReLU) {
      h = refRelu(h);
    } else if (layer instanceof GELU) {
      h = refGelu(h, layer.approximate);
    }
  }
  return h;
}

function maxRelative(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let scale = 0;
  let worst = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]!));
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
  return worst / Math.max(scale, 1e-30);
}

const TOLERANCE = 2e-5;

function rowOf(x: Matrix, b: number): Float32Array {
  return x.data.slice(b * x.cols, (b + 1) * x.cols);
}

function inputsOf(x: Matrix): number[][] {
  return Array.from({ length: x.rows }, (_, b) => Array.from(rowOf(x, b)));
}

async function coefficientBytes(t: ExecutionContext, c: AdapterCoefficients): Promise<Buffer> {
  const file = path.join(await tempDir(t, 'eigenlorax-serve-'), 'c.safetensors');
  await saveCoefficients(c, file);
  return readFile(file);
}

interface ErrorBody {
  error: { code: string; message: string };
}

function errorOf(body: string): ErrorBody['error'] {
  const parsed = JSON.parse(body) as ErrorBody;
  return parsed.error;
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

// ---------------------------------------------------------------------------------------
// ServedModel

test('ServedModel: each row with its own adapter equals the float64 dense reference; null rows get the base', async (t) => {
  const seed = freshSeed();
  const f = await fixture(seed);
  const model = await servedModel(f);
  t.deepEqual(model.adapterNames, NAMES);
  const n = 17;
  const x = randomMatrix(n, WIDTHS[0]!, seed + 5);
  const rows: Array<string | null> = Array.from({ length: n }, (_, b) => (b % 6 === 5 ? null : NAMES[(b * 3) % NAMES.length]!));
  const y = await model.forward(x, rows);
  t.is(y.rows, n);
  t.is(y.cols, WIDTHS[3]!);
  for (let b = 0; b < n; b++) {
    const want = reference(f, rows[b]!, rowOf(x, b));
    const got = y.data.subarray(b * y.cols, (b + 1) * y.cols);
    t.true(maxRelative(got, want) < TOLERANCE, `seed ${seed} row ${b} (${rows[b]}): ${maxRelative(got, want)}`);
  }
  // The adapters change the output (otherwise the comparison above proves little).
  t.true(maxRelative(reference(f, 'alpha', rowOf(x, 0)), reference(f, null, rowOf(x, 0))) > 1e-2);
  // A batch without adapters (the base path) and one row alone agree with the batch.
  const baseOnly = await model.forward(x, Array(n).fill(null));
  t.true(maxRelative(baseOnly.data.subarray(0, 4), reference(f, null, rowOf(x, 0))) < TOLERANCE);
  // One row alone goes through other product kernels (GEMV, not GEMM): equal to rounding.
  const alone = await model.forward(matrix(1, x.cols, rowOf(x, 1)), [rows[1]!]);
  const aloneError = maxRelative(alone.data, y.data.subarray(4, 8));
  t.true(aloneError < TOLERANCE, `seed ${seed}: row 1 alone differs from the batch by ${aloneError}`);
});

test('ServedModel: unknown adapters fail forward and are reported by tryForward', async (t) => {
  const f = await fixture(freshSeed());
  const model = await servedModel(f, ['alpha']);
  const x = randomMatrix(3, WIDTHS[0]!, 9);
  const error = await t.throwsAsync(model.forward(x, ['alpha', 'nope', null]), { instanceOf: EigenLoraxError });
  t.is(error?.code, 'ERR_UNKNOWN_ADAPTER');
  t.regex(error?.message ?? '', /adapters\[1\].*"nope"/);
  const r = await model.tryForward(x, ['nope', 'alpha', 'nope']);
  t.deepEqual(r.unknownRows, [0, 2]);
  t.true(maxRelative(r.output.data.subarray(4, 8), reference(f, 'alpha', rowOf(x, 1))) < TOLERANCE);
  await t.throwsAsync(model.forward(x, ['alpha']), { code: 'ERR_SHAPE_MISMATCH' });
  await t.throwsAsync(model.forward(randomMatrix(1, 5, 1), ['alpha']), { code: 'ERR_SHAPE_MISMATCH' });
});

test('ServedModel: a removal waits for the pass in flight; passes after it no longer see the adapter', async (t) => {
  const f = await fixture(freshSeed());
  const model = await servedModel(f, ['alpha', 'bravo']);
  const x = randomMatrix(4, WIDTHS[0]!, 21);
  const rows = ['alpha', 'bravo', 'alpha', null];
  const inFlight = model.forward(x, rows);
  const removal = model.remove('alpha');
  // Registered while the first pass runs: takes a fresh slot, not alpha's.
  const registration = model.register('charlie', f.byName.get('charlie')!);
  const after = model.tryForward(x, rows);
  const y = await inFlight;
  for (let b = 0; b < 4; b++) t.true(maxRelative(y.data.subarray(b * 4, b * 4 + 4), reference(f, rows[b]!, rowOf(x, b))) < TOLERANCE, `row ${b}`);
  t.true(await removal);
  t.is((await registration).name, 'charlie');
  const r = await after;
  t.deepEqual(r.unknownRows, [0, 2]);
  t.true(maxRelative(r.output.data.subarray(4, 8), reference(f, 'bravo', rowOf(x, 1))) < TOLERANCE);
  t.false(await model.remove('alpha'));
  t.deepEqual(model.adapterNames.sort(), ['bravo', 'charlie']);
  // Re-registering under a freed name reuses slots without mixing numbers.
  await model.register('alpha', f.byName.get('delta')!);
  const z = await model.forward(x, ['alpha', 'charlie', 'bravo', null]);
  t.true(maxRelative(z.data.subarray(0, 4), reference(f, 'delta', rowOf(x, 0))) < TOLERANCE);
  t.true(maxRelative(z.data.subarray(4, 8), reference(f, 'charlie', rowOf(x, 1))) < TOLERANCE);
});

test('ServedModel: refusals (layers, subspace, names, duplicates, non-finite coefficients)', async (t) => {
  const f = await fixture(freshSeed());
  // A subspace module that is not a layer of the model, or of other shapes.
  const other = new Sequential([Linear.create('fc1', 12, 10), new ReLU(), Linear.create('head', 10, 4)]);
  t.throws(() => new ServedModel(other, f.subspace), { code: 'ERR_SUBSPACE_MISMATCH', message: /fc2.*not a Linear layer/ });
  const wider = new Sequential([Linear.create('fc1', 12, 9), new ReLU(), Linear.create('fc2', 9, 8)]);
  t.throws(() => new ServedModel(wider, f.subspace), { code: 'ERR_SUBSPACE_MISMATCH', message: /fc1.*12 -> 10.*12 -> 9/ });
  const withLora = new Sequential([new LoRA('fc1', { base: { weight: matrix(10, 12) }, rank: 1 }), new ReLU(), Linear.create('fc2', 10, 8)]);
  t.throws(() => new ServedModel(withLora, f.subspace), { code: 'ERR_INVALID_ARGUMENT', message: /layers\[0\]/ });

  const model = await servedModel(f, ['alpha']);
  await t.throwsAsync(model.register('alpha', f.byName.get('bravo')!), { code: 'ERR_ADAPTER_EXISTS' });
  const replaced = await model.register('alpha', f.byName.get('bravo')!, { replace: true });
  t.is(replaced.source, 'bravo');
  for (const bad of ['', '../x', 'a/b', '.hidden', 'x'.repeat(129), 'sp ace']) {
    await t.throwsAsync(model.register(bad, f.byName.get('bravo')!), { code: 'ERR_INVALID_ARGUMENT' }, JSON.stringify(bad));
  }
  const c = f.byName.get('charlie')!;
  const poisoned: AdapterCoefficients = {
    ...c,
    modules: new Map([...c.modules].map(([k, m]) => [k, { ...m, beta: { ...m.beta, data: m.beta.data.map((v, i) => (i === 2 ? Number.NaN : v)) } }])),
  };
  await t.throwsAsync(model.register('poisoned', poisoned), { code: 'ERR_NON_FINITE', message: /beta holds NaN at index 2/ });
  const foreign = (await buildSubspace(zoo(77, 3), { components: 2, seed: 3, hashSources: false })).coefficients[0]!;
  await t.throwsAsync(model.register('foreign', foreign), { code: 'ERR_SUBSPACE_MISMATCH' });
  t.deepEqual(model.adapterNames, ['alpha']);
});

// ---------------------------------------------------------------------------------------
// MicroBatcher

test('MicroBatcher: flushes on rows or after the window, one batch at a time, answers each request on its own', async (t) => {
  const batches: number[][] = [];
  let hold: Promise<void> = Promise.resolve();
  const batcher = new MicroBatcher<number, number>({
    maxBatchRows: 4,
    batchWindowMs: 30,
    async run(items) {
      batches.push([...items]);
      await hold;
      return items.map((i) => (i < 0 ? { ok: false as const, error: new Error(`bad ${i}`) } : { ok: true as const, value: i * 10 }));
    },
  });
  // Three 1-row requests: one batch after the window.
  const started = performance.now();
  t.deepEqual(await Promise.all([1, 2, 3].map((i) => batcher.submit(i, 1))), [10, 20, 30]);
  t.true(performance.now() - started >= 25, 'waited for the window');
  t.deepEqual(batches, [[1, 2, 3]]);

  // Four rows flush at once; the fifth request runs next, as soon as the batch ends.
  batches.length = 0;
  const gate = deferred();
  hold = gate.promise;
  const first = [4, 5, 6, 7, 8].map((i) => batcher.submit(i, 1));
  t.deepEqual(batches, [[4, 5, 6, 7]], 'flushed synchronously when full');
  // While that batch runs, more requests accumulate (and a failing one among them).
  const more = [9, -1, 10].map((i) => batcher.submit(i, 1).then((v) => ({ v }), (e: Error) => ({ e: e.message })));
  await new Promise((r) => setTimeout(r, 60));
  t.is(batches.length, 1, 'one batch at a time');
  t.like(batcher.stats(), { running: true, queuedItems: 4, queuedRows: 4 });
  gate.resolve();
  t.deepEqual(await Promise.all(first), [40, 50, 60, 70, 80]);
  t.deepEqual(await Promise.all(more), [{ v: 90 }, { e: 'bad -1' }, { v: 100 }]);
  t.deepEqual(batches, [[4, 5, 6, 7], [8, 9, -1, 10]]);
  hold = Promise.resolve();

  // A request larger than a batch runs alone; a batch after it takes the rest.
  batches.length = 0;
  t.deepEqual(await Promise.all([batcher.submit(11, 6), batcher.submit(12, 1)]), [110, 120]);
  t.deepEqual(batches, [[11], [12]]);
  t.like(batcher.stats(), { batches: 5, items: 13, rows: 18, maxBatchRows: 6, queuedItems: 0, running: false });
  t.throws(() => batcher.submit(1, 0), { code: 'ERR_INVALID_ARGUMENT' });
});

test('MicroBatcher: a runner that throws fails its batch only; close runs the queue at once and refuses more', async (t) => {
  let fail = true;
  const batcher = new MicroBatcher<string, string>({
    maxBatchRows: 8,
    batchWindowMs: 10_000,
    async run(items) {
      if (fail) throw new EigenLoraxError('boom', 'ERR_INTERNAL');
      return items.map((s) => ({ ok: true as const, value: s.toUpperCase() }));
    },
  });
  const failing = [batcher.submit('a', 4), batcher.submit('b', 4)];
  for (const p of failing) await t.throwsAsync(p, { message: 'boom' });
  fail = false;
  const waiting = [batcher.submit('c', 1), batcher.submit('d', 1)];
  const started = performance.now();
  const closed = batcher.close();
  await t.throwsAsync(batcher.submit('e', 1), { code: 'ERR_CLOSED' });
  t.deepEqual(await Promise.all(waiting), ['C', 'D']);
  await closed;
  t.true(performance.now() - started < 5000, 'did not wait for the 10 s window');
  t.throws(() => new MicroBatcher({ run: async () => [], maxBatchRows: 0 }), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => new MicroBatcher({ run: async () => [], batchWindowMs: -1 }), { code: 'ERR_INVALID_ARGUMENT' });
});

// ---------------------------------------------------------------------------------------
// The folder

test('writeServeFolder and loadServedModel: a round trip that serves the same numbers; broken folders are refused', async (t) => {
  const f = await fixture(freshSeed());
  const dir = path.join(await tempDir(t, 'eigenlorax-serve-'), 'served');
  const written = await writeServeFolder(dir, { model: f.base, subspace: f.subspace, adapters: NAMES.slice(0, 3).map((n) => [n, f.byName.get(n)!] as const) });
  t.deepEqual(
    [...written.files].sort(),
    ['adapters/alpha.safetensors', 'adapters/bravo.safetensors', 'adapters/charlie.safetensors', 'base.safetensors', 'model.json', 'subspace/subspace.json', 'subspace/subspace.safetensors'],
  );
  const loaded = await loadServedModel(dir);
  t.deepEqual(loaded.adapterNames, ['alpha', 'bravo', 'charlie']);
  t.is(loaded.subspace.id, f.subspace.id);
  const x = randomMatrix(3, WIDTHS[0]!, 4);
  const rows = ['charlie', null, 'alpha'];
  const y = await loaded.forward(x, rows);
  for (let b = 0; b < 3; b++) t.true(maxRelative(y.data.subarray(b * 4, b * 4 + 4), reference(f, rows[b]!, rowOf(x, b))) < TOLERANCE);

  // Rewriting with fewer adapters removes the others' files.
  await writeServeFolder(dir, { model: f.base, subspace: f.subspace, adapters: [['bravo', f.byName.get('bravo')!]] });
  t.deepEqual((await loadServedModel(dir)).adapterNames, ['bravo']);

  const modelFile = path.join(dir, 'model.json');
  const good = await readFile(modelFile, 'utf8');
  const broken = async (text: string, pattern: RegExp, code = 'ERR_MODEL_FORMAT') => {
    await writeFile(modelFile, text);
    await t.throwsAsync(loadServedModel(dir), { code, message: pattern }, text.slice(0, 60));
  };
  const record = JSON.parse(good) as Record<string, unknown>;
  await broken('{ not json', /not JSON/);
  await broken(JSON.stringify({ ...record, formatVersion: 99 }), /formatVersion.*99/);
  await broken(JSON.stringify({ ...record, layers: [{ kind: 'conv' }] }), /layers\[0\]\.kind/);
  await broken(JSON.stringify({ ...record, layers: [{ kind: 'linear', name: 'fc1', inFeatures: 12, outFeatures: 0, bias: true }] }), /outFeatures/);
  await broken(JSON.stringify({ ...record, subspaceId: 'f'.repeat(64) }), /subspaceId/);
  await broken(JSON.stringify({ ...record, inFeatures: 13 }), /field "inFeatures": expected the widths the layers give \(12 in/);
  // Weights of other shapes than model.json says.
  const layers = (record.layers as Array<Record<string, unknown>>).map((l) => (l.name === 'fc3' ? { ...l, outFeatures: 5 } : l));
  await broken(JSON.stringify({ ...record, layers, outFeatures: 5 }), /fc3\.weight/, 'ERR_SHAPE_MISMATCH');
  await writeFile(modelFile, good);
  await writeFile(path.join(dir, 'adapters', '-bad.safetensors'), await readFile(path.join(dir, 'adapters', 'bravo.safetensors')));
  await t.throwsAsync(loadServedModel(dir), { code: 'ERR_MODEL_FORMAT', message: /-bad\.safetensors/ });
  await rm(path.join(dir, 'adapters'), { recursive: true });
  t.deepEqual((await loadServedModel(dir)).adapterNames, [], 'no adapters folder: no adapters');
  await t.throwsAsync(loadServedModel(path.join(dir, 'missing')), { code: 'ERR_NOT_FOUND' });
});

// ---------------------------------------------------------------------------------------
// HTTP

test('HTTP: concurrent requests with different adapters share one batch and get what each gets alone', async (t) => {
  const seed = freshSeed();
  const f = await fixture(seed);
  const model = await servedModel(f);
  const requests = 8;
  // The batch is full (and runs) exactly when the 8th row arrives: no timing involved.
  const app = createServer({ model, maxBatchRows: requests, batchWindowMs: 10_000 });
  t.teardown(() => app.close());
  const x = randomMatrix(requests, WIDTHS[0]!, seed + 3);
  const adapters = Array.from({ length: requests }, (_, i) => (i === 3 ? null : NAMES[i % NAMES.length]!));
  const responses = await Promise.all(
    adapters.map((adapter, i) => app.inject({ method: 'POST', url: '/v1/predict', payload: { adapter, inputs: Array.from(rowOf(x, i)) } })),
  );
  for (const [i, r] of responses.entries()) {
    t.is(r.statusCode, 200, r.body);
    const body = r.json<{ adapter: string | null; logits: number[][]; labels: number[] }>();
    t.is(body.adapter, adapters[i]!);
    t.is(body.logits.length, 1);
    const want = reference(f, adapters[i]!, rowOf(x, i));
    t.true(maxRelative(body.logits[0]!, want) < TOLERANCE, `seed ${seed} request ${i}: ${maxRelative(body.logits[0]!, want)}`);
    t.is(body.labels[0], want.indexOf(Math.max(...want)));
  }
  const stats = (await app.inject({ method: 'GET', url: '/v1/stats' })).json<{ batches: Record<string, number>; requests: { predict: number } }>();
  t.like(stats.batches, { count: 1, requests, rows: requests, meanRows: requests, meanRequests: requests, maxRows: requests });
  t.is(stats.requests.predict, requests);

  // Several rows in one request, and a request for the base model without "adapter".
  // 3 + 5 rows: one more full batch.
  const [m, base] = await Promise.all([
    app.inject({ method: 'POST', url: '/v1/predict', payload: { adapter: 'echo', inputs: inputsOf(x).slice(0, 3) } }),
    app.inject({ method: 'POST', url: '/v1/predict', payload: { inputs: inputsOf(x).slice(0, 5) } }),
  ]);
  t.is(m!.statusCode, 200);
  t.is(base!.statusCode, 200);
  const ml = m!.json<{ logits: number[][] }>().logits;
  t.is(ml.length, 3);
  for (let b = 0; b < 3; b++) t.true(maxRelative(ml[b]!, reference(f, 'echo', rowOf(x, b))) < TOLERANCE);
  const bl = base!.json<{ adapter: null; logits: number[][] }>();
  t.is(bl.adapter, null);
  for (let b = 0; b < 5; b++) t.true(maxRelative(bl.logits[b]!, reference(f, null, rowOf(x, b))) < TOLERANCE);
});

test('HTTP: every bad request gets its status and a JSON error naming the field, and the server keeps serving', async (t) => {
  const f = await fixture(freshSeed());
  const model = await servedModel(f, ['alpha', 'bravo']);
  const app = createServer({ model, batchWindowMs: 0, maxRowsPerRequest: 4, bodyLimit: 4096 });
  t.teardown(() => app.close());
  const row = Array.from(randomMatrix(1, WIDTHS[0]!, 2).data);
  const json = { 'content-type': 'application/json' };
  const cases: Array<{ what: string; request: InjectOptions; status: number; code: string; message: RegExp }> = [
    { what: 'malformed JSON', request: { method: 'POST', url: '/v1/predict', headers: json, payload: '{"inputs": [1, 2' }, status: 400, code: 'ERR_MALFORMED_REQUEST', message: /JSON/ },
    { what: 'empty JSON body', request: { method: 'POST', url: '/v1/predict', headers: json, payload: '' }, status: 400, code: 'ERR_MALFORMED_REQUEST', message: /empty/ },
    { what: 'a JSON array', request: { method: 'POST', url: '/v1/predict', headers: json, payload: '[1, 2]' }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /request body/ },
    { what: 'text/plain', request: { method: 'POST', url: '/v1/predict', headers: { 'content-type': 'text/plain' }, payload: 'hello' }, status: 415, code: 'ERR_MALFORMED_REQUEST', message: /text\/plain/ },
    { what: 'an unsupported content type', request: { method: 'POST', url: '/v1/predict', headers: { 'content-type': 'image/png' }, payload: 'xx' }, status: 415, code: 'ERR_MALFORMED_REQUEST', message: /image\/png/ },
    { what: 'an unknown field', request: { method: 'POST', url: '/v1/predict', payload: { inputs: row, adaptor: 'alpha' } }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /"adaptor"/ },
    { what: 'adapter of the wrong type', request: { method: 'POST', url: '/v1/predict', payload: { adapter: 7, inputs: row } }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /adapter: expected an adapter name .* or null, received 7/ },
    { what: 'no inputs', request: { method: 'POST', url: '/v1/predict', payload: { adapter: 'alpha' } }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /inputs: expected an array of 12 numbers, or an array of 1 to 4 such arrays, received nothing/ },
    { what: 'empty inputs', request: { method: 'POST', url: '/v1/predict', payload: { inputs: [] } }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /inputs: expected an array of 12 numbers, or .*, received \[\]/ },
    { what: 'inputs a string', request: { method: 'POST', url: '/v1/predict', payload: { inputs: 'abc' } }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /inputs: expected/ },
    { what: 'a short row', request: { method: 'POST', url: '/v1/predict', payload: { inputs: row.slice(1) } }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /inputs: expected an array of 12 numbers, received 11 items/ },
    { what: 'a long second row', request: { method: 'POST', url: '/v1/predict', payload: { inputs: [row, [...row, 1]] } }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /inputs\[1\]: expected an array of 12 numbers, received 13 items/ },
    { what: 'rows mixed with numbers', request: { method: 'POST', url: '/v1/predict', payload: { inputs: [row, 3] } }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /inputs\[1\]: expected an array of 12 numbers, received 3/ },
    { what: 'a string "NaN"', request: { method: 'POST', url: '/v1/predict', payload: { inputs: [row, row.map((v, i) => (i === 5 ? 'NaN' : v))] } }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /inputs\[1\]\[5\]: expected a number, received "NaN"/ },
    { what: 'a null entry', request: { method: 'POST', url: '/v1/predict', payload: { inputs: row.map((v, i) => (i === 0 ? null : v)) } }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /inputs\[0\]: expected a number, received null/ },
    { what: 'a number beyond float32', request: { method: 'POST', url: '/v1/predict', headers: json, payload: `{"inputs": [${row.slice(0, 11).join(',')}, 1e39]}` }, status: 400, code: 'ERR_NON_FINITE', message: /inputs\[11\]/ },
    { what: 'a number beyond float64', request: { method: 'POST', url: '/v1/predict', headers: json, payload: `{"inputs": [1e999, ${row.slice(1).join(',')}]}` }, status: 400, code: 'ERR_NON_FINITE', message: /inputs\[0\]: Infinity/ },
    { what: 'too many rows', request: { method: 'POST', url: '/v1/predict', payload: { inputs: [row, row, row, row, row] } }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /at most 4 rows/ },
    { what: 'a body over the limit', request: { method: 'POST', url: '/v1/predict', payload: { inputs: Array(40).fill(row) } }, status: 413, code: 'ERR_PAYLOAD_TOO_LARGE', message: /4096 bytes/ },
    { what: 'an unknown adapter', request: { method: 'POST', url: '/v1/predict', payload: { adapter: 'zulu', inputs: row } }, status: 404, code: 'ERR_UNKNOWN_ADAPTER', message: /"zulu"/ },
    { what: 'an ill-formed adapter name', request: { method: 'POST', url: '/v1/predict', payload: { adapter: '../etc', inputs: row } }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /adapter: expected an adapter name/ },
    { what: 'an unknown route', request: { method: 'GET', url: '/v2/predict' }, status: 404, code: 'ERR_NOT_FOUND', message: /GET \/v2\/predict/ },
    { what: 'the wrong method', request: { method: 'GET', url: '/v1/predict' }, status: 404, code: 'ERR_NOT_FOUND', message: /GET/ },
    { what: 'deleting an unknown adapter', request: { method: 'DELETE', url: '/v1/adapters/zulu' }, status: 404, code: 'ERR_UNKNOWN_ADAPTER', message: /"zulu"/ },
    { what: 'getting an unknown adapter', request: { method: 'GET', url: '/v1/adapters/zulu' }, status: 404, code: 'ERR_UNKNOWN_ADAPTER', message: /"zulu"/ },
    { what: 'an ill-formed name in the URL', request: { method: 'DELETE', url: '/v1/adapters/.hidden' }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /adapter name in the URL/ },
    { what: 'an upload as JSON', request: { method: 'PUT', url: '/v1/adapters/new', payload: { alpha: [1] } }, status: 415, code: 'ERR_MALFORMED_REQUEST', message: /application\/octet-stream/ },
    { what: 'an empty upload', request: { method: 'PUT', url: '/v1/adapters/new', headers: { 'content-type': 'application/octet-stream' }, payload: Buffer.alloc(0) }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /request body/ },
    { what: 'an upload that is not safetensors', request: { method: 'PUT', url: '/v1/adapters/new', headers: { 'content-type': 'application/octet-stream' }, payload: Buffer.from('definitely not a safetensors file') }, status: 400, code: 'ERR_SUBSPACE_FORMAT', message: /the request body/ },
    { what: 'a bad replace value', request: { method: 'PUT', url: '/v1/adapters/new?replace=maybe', headers: { 'content-type': 'application/octet-stream' }, payload: Buffer.from('x') }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /replace/ },
    { what: 'an unknown query parameter', request: { method: 'PUT', url: '/v1/adapters/new?force=1', headers: { 'content-type': 'application/octet-stream' }, payload: Buffer.from('x') }, status: 400, code: 'ERR_INVALID_ARGUMENT', message: /"force"/ },
  ];
  for (const c of cases) {
    const r = await app.inject(c.request);
    t.is(r.statusCode, c.status, `${c.what}: ${r.body}`);
    const e = errorOf(r.body);
    t.is(e.code, c.code, `${c.what}: ${r.body}`);
    t.regex(e.message, c.message, c.what);
    t.false(e.message.includes(path.sep + 'tmp' + path.sep), `${c.what}: no temporary path in ${e.message}`);
  }
  // Uploads of coefficients that belong elsewhere, or under a taken name.
  const foreign = (await buildSubspace(zoo(99, 3), { components: 2, seed: 3, hashSources: false })).coefficients[0]!;
  const upload = async (name: string, bytes: Buffer, query = '') =>
    app.inject({ method: 'PUT', url: `/v1/adapters/${name}${query}`, headers: { 'content-type': 'application/octet-stream' }, payload: bytes });
  let r = await upload('new', await coefficientBytes(t, foreign));
  t.is(r.statusCode, 400, r.body);
  t.is(errorOf(r.body).code, 'ERR_SUBSPACE_MISMATCH');
  t.regex(errorOf(r.body).message, /^the request body: /);
  r = await upload('alpha', await coefficientBytes(t, f.byName.get('charlie')!));
  t.is(r.statusCode, 409, r.body);
  t.is(errorOf(r.body).code, 'ERR_ADAPTER_EXISTS');

  // Still serving, with the right numbers, and the stats count the failures.
  const ok = await app.inject({ method: 'POST', url: '/v1/predict', payload: { adapter: 'bravo', inputs: row } });
  t.is(ok.statusCode, 200, ok.body);
  t.true(maxRelative(ok.json<{ logits: number[][] }>().logits[0]!, reference(f, 'bravo', row)) < TOLERANCE);
  const health = await app.inject({ method: 'GET', url: '/healthz' });
  t.deepEqual(health.json(), { status: 'ok', adapters: 2 });
  const stats = (await app.inject({ method: 'GET', url: '/v1/stats' })).json<{ requests: { byStatus: Record<string, number> } }>();
  t.like(stats.requests.byStatus, { 413: 1, 409: 1 });
  t.true(stats.requests.byStatus['200']! >= 1);
  t.true(stats.requests.byStatus['400']! >= 20);
});

test('HTTP: adapters are registered, replaced and removed while requests are in flight; no request gets another adapter', async (t) => {
  const seed = freshSeed();
  const f = await fixture(seed);
  const model = await servedModel(f, ['alpha', 'bravo']);
  const app = createServer({ model, maxBatchRows: 64, batchWindowMs: 100 });
  t.teardown(() => app.close());
  const x = randomMatrix(12, WIDTHS[0]!, seed + 8);
  const predict = (adapter: string | null, b: number) =>
    app.inject({ method: 'POST', url: '/v1/predict', payload: { adapter, inputs: Array.from(rowOf(x, b)) } });

  // Accepted while alpha is registered, but alpha is removed before their batch runs:
  // those requests get 404, the bravo and base requests of the same batch are answered.
  const queued = [predict('alpha', 0), predict('bravo', 1), predict('alpha', 2), predict(null, 3)];
  await new Promise((r) => setTimeout(r, 20));
  const removed = await app.inject({ method: 'DELETE', url: '/v1/adapters/alpha' });
  t.is(removed.statusCode, 200, removed.body);
  t.deepEqual(removed.json(), { adapter: 'alpha', removed: true });
  const answers = await Promise.all(queued);
  t.deepEqual(answers.map((a) => a.statusCode), [404, 200, 404, 200]);
  t.is(errorOf(answers[0]!.body).code, 'ERR_UNKNOWN_ADAPTER');
  t.true(maxRelative(answers[1]!.json<{ logits: number[][] }>().logits[0]!, reference(f, 'bravo', rowOf(x, 1))) < TOLERANCE);
  t.true(maxRelative(answers[3]!.json<{ logits: number[][] }>().logits[0]!, reference(f, null, rowOf(x, 3))) < TOLERANCE);
  const stats = (await app.inject({ method: 'GET', url: '/v1/stats' })).json<{ batches: { count: number } }>();
  t.is(stats.batches.count, 1, 'the four requests ran as one batch');

  // Uploads while requests stream: every answer is its adapter's (or a 404 for one not yet there).
  const put = async (name: string, source: string, query = '') =>
    app.inject({
      method: 'PUT',
      url: `/v1/adapters/${name}${query}`,
      headers: { 'content-type': 'application/octet-stream' },
      payload: await coefficientBytes(t, f.byName.get(source)!),
    });
  const stream: Array<Promise<{ adapter: string; b: number; response: Awaited<ReturnType<typeof predict>> }>> = [];
  for (let k = 0; k < 6; k++) {
    for (const adapter of ['bravo', 'charlie', 'delta']) {
      const b = (k * 3 + adapter.length) % x.rows;
      stream.push(predict(adapter, b).then((response) => ({ adapter, b, response })));
    }
    if (k === 1) t.is((await put('charlie', 'charlie')).statusCode, 201);
    if (k === 3) {
      // delta arrives, bravo is replaced by echo's coefficients: later bravo answers are echo's.
      t.is((await put('delta', 'delta')).statusCode, 201);
      const replaced = await put('bravo', 'echo', '?replace=true');
      t.is(replaced.statusCode, 200, replaced.body);
      t.like(replaced.json(), { replaced: true, adapter: { name: 'bravo', source: 'echo' } });
    }
    await new Promise((r) => setTimeout(r, 15));
  }
  let answered = 0;
  for (const { adapter, b, response } of await Promise.all(stream)) {
    if (response.statusCode === 404) {
      t.is(errorOf(response.body).code, 'ERR_UNKNOWN_ADAPTER');
      t.not(adapter, 'bravo', 'bravo was always registered');
      continue;
    }
    t.is(response.statusCode, 200, response.body);
    answered++;
    const logits = response.json<{ logits: number[][] }>().logits[0]!;
    // bravo is bravo's or echo's (replaced mid-stream), never anything else.
    const candidates = adapter === 'bravo' ? ['bravo', 'echo'] : [adapter];
    const best = Math.min(...candidates.map((c) => maxRelative(logits, reference(f, c, rowOf(x, b)))));
    t.true(best < TOLERANCE, `seed ${seed}: ${adapter} row ${b}: ${best}`);
  }
  t.true(answered >= 12, `${answered} answered`);
  const list = (await app.inject({ method: 'GET', url: '/v1/adapters' })).json<{ count: number; adapters: Array<{ name: string; source: string }> }>();
  t.is(list.count, 3);
  t.deepEqual(list.adapters.map((a) => a.name).sort(), ['bravo', 'charlie', 'delta']);
  const late = await predict('bravo', 0);
  t.true(maxRelative(late.json<{ logits: number[][] }>().logits[0]!, reference(f, 'echo', rowOf(x, 0))) < TOLERANCE);
});

test('startServer: loopback by default, real sockets with keep-alive, and close answers the requests in flight', async (t) => {
  const f = await fixture(freshSeed());
  const model = await servedModel(f, ['alpha']);
  const server = await startServer({ model, port: 0, batchWindowMs: 300 });
  let closed = false;
  t.teardown(async () => {
    if (!closed) await server.app.close();
  });
  t.is(server.host, '127.0.0.1');
  t.regex(server.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  const address = server.app.server.address();
  t.true(address !== null && typeof address === 'object' && address.address === '127.0.0.1');
  t.deepEqual(await (await fetch(`${server.url}/healthz`)).json(), { status: 'ok', adapters: 1 });
  const x = randomMatrix(3, WIDTHS[0]!, 31);
  const inFlight = [0, 1, 2].map((b) =>
    fetch(`${server.url}/v1/predict`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ adapter: b === 1 ? null : 'alpha', inputs: Array.from(rowOf(x, b)) }) }),
  );
  // Wait until all three wait in the queue (their window is 300 ms), then close.
  for (let i = 0; i < 100; i++) {
    const s = (await (await fetch(`${server.url}/v1/stats`)).json()) as { batches: { queuedRequests: number } };
    if (s.batches.queuedRequests === 3) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  const closing = server.app.close();
  closed = true;
  const responses = await Promise.all(inFlight);
  for (const [b, r] of responses.entries()) {
    t.is(r.status, 200);
    const body = (await r.json()) as { logits: number[][] };
    t.true(maxRelative(body.logits[0]!, reference(f, b === 1 ? null : 'alpha', rowOf(x, b))) < TOLERANCE);
  }
  await closing;
  await t.throwsAsync(fetch(`${server.url}/healthz`));
  await t.throwsAsync(startServer({ model, port: 70000 }), { code: 'ERR_INVALID_ARGUMENT' });
});

// ---------------------------------------------------------------------------------------
// The command

test('eigenlorax serve: serves a folder on a free port, answers, and stops cleanly on SIGTERM', async (t) => {
  const seed = freshSeed();
  const f = await fixture(seed);
  const dir = path.join(await tempDir(t, 'eigenlorax-serve-'), 'served');
  await writeServeFolder(dir, { model: f.base, subspace: f.subspace, adapters: [['alpha', f.byName.get('alpha')!], ['rot+20', f.byName.get('bravo')!]] });
  const x = randomMatrix(2, WIDTHS[0]!, seed);
  let answers: Array<{ logits: number[][] }> = [];
  const listening = /listening on (http:\/\/\S+)/;
  const run = await eigenlorax([...['serve', dir], '--port', '0', '--max-batch', '8', '--batch-window-ms', '2', '--pair-cache', '1MiB'], {
    whenOutput: {
      pattern: listening,
      run: async ([, url = ''], child) => {
        t.regex(url, /^http:\/\/127\.0\.0\.1:\d+$/);
        const list = (await (await fetch(`${url}/v1/adapters`)).json()) as { adapters: Array<{ name: string }> };
        t.deepEqual(list.adapters.map((a) => a.name), ['alpha', 'rot+20']);
        answers = (await Promise.all(
          ['alpha', 'rot+20'].map(async (adapter, b) => {
            const r = await fetch(`${url}/v1/predict`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ adapter, inputs: Array.from(rowOf(x, b)) }) });
            return r.json();
          }),
        )) as Array<{ logits: number[][] }>;
        child.kill('SIGTERM');
      },
    },
  });
  t.is(run.error, undefined, String(run.error));
  t.is(run.code, 0, run.stderr);
  t.regex(run.stdout, /adapters {2}2: alpha, rot\+20/);
  t.regex(run.stderr, /SIGTERM: finishing the requests in flight/);
  t.regex(run.stderr, /stopped/);
  t.is(answers.length, 2);
  t.true(maxRelative(answers[0]!.logits[0]!, reference(f, 'alpha', rowOf(x, 0))) < TOLERANCE);
  t.true(maxRelative(answers[1]!.logits[0]!, reference(f, 'bravo', rowOf(x, 1))) < TOLERANCE);
});

test('eigenlorax serve opens by default the folder that eigenlorax demo writes by default', (t) => {
  t.is(DEFAULT_SERVE_FOLDER, path.join(DEFAULT_DEMO_OUT, 'serve'));
});

test('eigenlorax serve: argument errors exit 2 with the usage; a missing folder exits 1', async (t) => {
  const bad: Array<[string[], RegExp]> = [
    [['--port', 'abc'], /--port expects an integer from 0 to 65535, not "abc"/],
    [['--port', '70000'], /--port expects/],
    [['--max-batch', '0'], /--max-batch expects an integer >= 1/],
    [['--max-rows', '1.5'], /--max-rows expects/],
    [["--body-limit", "0"], /--body-limit expects/],
    [['--batch-window-ms=-1'], /--batch-window-ms expects a number of milliseconds >= 0/],
    [['--batch-window-ms', 'soon'], /--batch-window-ms expects/],
    [['--host', ''], /--host expects/],
    [['a', 'b'], /serve takes one folder/],
    [['--request-timeout-ms', 'soon'], /--request-timeout-ms expects an integer >= 1, not "soon"/],
    [['--max-uploads-per-client', '0'], /--max-uploads-per-client expects an integer >= 1/],
    [['--token', ''], /--token expects a token/],
    [['--pair-cache', 'lots'], /--pair-cache expects a size such as 512MB, 4GB or 1\.5GiB .* not "lots"/],
  ];
  for (const [args, message] of bad) {
    const r = await eigenlorax(['serve', ...args]);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, message, args.join(' '));
    t.regex(r.stderr, /eigenlorax serve \[folder\]/, 'prints the usage');
  }
  const unknown = await eigenlorax(['serve', '--frobnicate']);
  t.is(unknown.code, 2, unknown.stderr);
  t.regex(unknown.stderr, /frobnicate/);
  const missing = await eigenlorax(['serve', path.join(await tempDir(t, 'eigenlorax-serve-'), 'nothing-here'), '--port', '0']);
  t.is(missing.code, 1, missing.stderr);
  t.regex(missing.stderr, /model\.json.*ERR_NOT_FOUND/);
  t.is(missing.stdout, '');
});
