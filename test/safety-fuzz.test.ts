/**
 * Issue 13, Deliver 2: property-based mutation of adapter, subspace and coefficients
 * files (synthetic, and a real GPT-2 PEFT adapter from ../shared/realdata when present).
 * Each mutated file -- byte flips, truncation, an edited header, appended junk -- must
 * give a valid result or a typed EigenLoraxError with a code, within a time bound, and
 * leave no file behind in its folder. Fixed seeds and bounded runs, so a failure replays.
 */
import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { EigenLoraxError, buildSubspace, loadAdapter, loadCoefficients, loadSubspace, saveAdapter, saveCoefficients, saveSubspace } from '../lib/index.js';
import { tempDir } from './helpers/adapter-fixtures.js';
import { memoryAdapter, plantedBases, plantedFactors } from './helpers/subspace-fixtures.js';

const realdata = path.resolve(fileURLToPath(new URL('../../..', import.meta.url)), 'shared', 'realdata');
const realPeft = path.join(realdata, 'gpt2', 'anirudh-ak__peft-gpt2__emotion6');
const TIME_BOUND_MS = 15_000;

type Mutation =
  | { kind: 'flip'; at: number; xor: number }[]
  | { kind: 'truncate'; to: number }
  | { kind: 'header'; at: number; text: string }
  | { kind: 'append'; bytes: Uint8Array };

/** Mutations of a file of `size` bytes whose header ends at `headerEnd`. */
function mutation(size: number, headerEnd: number): fc.Arbitrary<Mutation> {
  const flip = fc.record({ kind: fc.constant('flip' as const), at: fc.nat({ max: size - 1 }), xor: fc.integer({ min: 1, max: 255 }) });
  return fc.oneof(
    fc.array(flip, { minLength: 1, maxLength: 4 }),
    fc.record({ kind: fc.constant('truncate' as const), to: fc.nat({ max: size - 1 }) }),
    fc.record({
      kind: fc.constant('header' as const),
      at: fc.integer({ min: 8, max: Math.max(8, headerEnd - 1) }),
      text: fc.oneof(fc.constantFrom('"', '}', '{', ',', '99999999999', '-1', '"F16"', '[0,0]', '\\u0000', 'null'), fc.string({ maxLength: 6 })),
    }),
    fc.record({ kind: fc.constant('append' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
  );
}

function apply(bytes: Buffer, m: Mutation): Buffer {
  if (Array.isArray(m)) {
    const out = Buffer.from(bytes);
    for (const f of m) out[f.at] = out[f.at]! ^ f.xor;
    return out;
  }
  if (m.kind === 'truncate') return bytes.subarray(0, m.to);
  if (m.kind === 'append') return Buffer.concat([bytes, m.bytes]);
  const text = Buffer.from(m.text, 'utf8');
  const out = Buffer.from(bytes);
  text.copy(out, m.at, 0, Math.min(text.length, out.length - m.at));
  return out;
}

async function withinBound<T>(promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${TIME_BOUND_MS} ms`)), TIME_BOUND_MS);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Mutates `victim` (a file inside `folder`) `runs` times and loads `folder` with `load`
 * after each: a result or an EigenLoraxError with a code; the folder's listing unchanged.
 */
async function fuzz(t: ExecutionContext, folder: string, victim: string, load: () => Promise<unknown>, seed: number, runs: number): Promise<void> {
  const original = await readFile(victim);
  const headerEnd = 8 + Number(original.readBigUInt64LE(0));
  const listing = (await readdir(folder)).sort();
  const outcomes = new Map<string, number>();
  await fc.assert(
    fc.asyncProperty(mutation(original.length, headerEnd), async (m) => {
      await writeFile(victim, apply(original, m));
      let outcome = 'valid';
      try {
        await withinBound(load());
      } catch (error) {
        if (!(error instanceof EigenLoraxError) || typeof error.code !== 'string' || !error.code.startsWith('ERR_')) throw error;
        outcome = error.code;
      }
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      const now = (await readdir(folder)).sort();
      if (JSON.stringify(now) !== JSON.stringify(listing)) throw new Error(`files left behind: ${JSON.stringify(now)}`);
    }),
    { seed, numRuns: runs, endOnFailure: true },
  );
  await writeFile(victim, original);
  await load();
  t.log(path.basename(victim), Object.fromEntries(outcomes));
  t.true((outcomes.get('valid') ?? 0) < runs, 'some mutations were refused');
}

async function subspaceOf(seed: number) {
  const bases = plantedBases(6, 5, 2, 2, seed);
  const adapters = [0, 1, 2].map((i) => memoryAdapter([{ name: 'fc1', ...plantedFactors(bases, 2, seed + i, 0.2), alpha: 1 + i }]));
  return buildSubspace(adapters, { components: 2, seed: 1, hashSources: false, names: ['a', 'b', 'c'] });
}

test('mutated synthetic PEFT adapters: a result or a typed error, in time, nothing left behind', async (t) => {
  const dir = path.join(await tempDir(t), 'peft');
  const bases = plantedBases(8, 6, 2, 2, 5);
  await saveAdapter(memoryAdapter([0, 1].map((i) => ({ name: `model.layers.${i}.q_proj`, ...plantedFactors(bases, 2, 7 + i, 0.2), alpha: 8 }))), dir, { format: 'peft' });
  await fuzz(t, dir, path.join(dir, 'adapter_model.safetensors'), () => loadAdapter(dir), 1301, 60);
});

test('mutated subspace and coefficients files: a result or a typed error, in time, nothing left behind', async (t) => {
  const root = await tempDir(t);
  const subspace = await subspaceOf(3);
  const sub = path.join(root, 'sub');
  await saveSubspace(subspace, sub);
  await fuzz(t, sub, path.join(sub, 'subspace.safetensors'), () => loadSubspace(sub), 1302, 60);
  const coefficients = path.join(root, 'coef');
  await mkdir(coefficients);
  const file = path.join(coefficients, 'c.safetensors');
  await saveCoefficients(subspace.coefficients[0]!, file);
  await fuzz(t, coefficients, file, () => loadCoefficients(file, subspace), 1303, 60);
});

if (existsSync(realPeft)) {
  test('mutated real GPT-2 PEFT adapter (../shared/realdata): a result or a typed error, in time', async (t) => {
    const dir = path.join(await tempDir(t), 'real');
    await mkdir(dir);
    for (const name of await readdir(realPeft)) await copyFile(path.join(realPeft, name), path.join(dir, name));
    await fuzz(t, dir, path.join(dir, 'adapter_model.safetensors'), () => loadAdapter(dir), 1304, 30);
  });
} else {
  test('mutated real adapter: skipped', (t) => {
    t.log(`${realPeft} does not exist: the real-adapter mutation test needs ../shared/realdata`);
    t.pass();
  });
}
