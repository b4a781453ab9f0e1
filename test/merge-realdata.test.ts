/**
 * Merging the seven real GPT-2 adapters of ../shared/realdata (see its README) into a
 * synthetic base with GPT-2's names and shapes: each merge changes exactly the adapted
 * tensors (12 c_attn weights, or 36 with attn.c_proj and mlp.c_proj), each by s (B A)^T
 * (checked against float64: whole tensors for layer 0, sampled entries elsewhere), and
 * nothing else, byte for byte. When the folder is absent a single test says so and passes.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadAdapter, mergeIntoBase, openSafetensors, writeSafetensors, type LoraAdapter, type LoraModule, type SafetensorsEntry } from '../lib/index.js';

const repoRoot = path.resolve(fileURLToPath(new URL('../..', import.meta.url)));
const realdata = path.resolve(repoRoot, '..', 'shared', 'realdata');
const gpt2 = path.join(realdata, 'gpt2');

/** lora_alpha of each adapter (README table); all r = 8, fan_in_fan_out. */
const adapters: Record<string, { alpha: number; cProj: boolean }> = {
  'anirudh-ak__peft-gpt2__emotion6': { alpha: 8, cProj: false },
  'greulist137__Fine-Tuning-Gen-AI-Model__dair-emotion6': { alpha: 8, cProj: false },
  'stathopoan__Apply-Lightweight-Fine-Tuning-to-a-Foundation-LLM-Model__dair-emotion6': { alpha: 16, cProj: false },
  'yzzhome__Lightweight-Fine-Tuning__yelp5': { alpha: 6, cProj: false },
  'ybriz__generative-ai__imdb': { alpha: 32, cProj: false },
  'abrhaleyarefaine1997__gpt2-tigrinya-lora__tigrinya-clm': { alpha: 32, cProj: true },
  'gurvineet__peft-implementation__app-reviews-rating': { alpha: 32, cProj: true },
};

const U32 = 2 ** -24;
const LAYERS = 12;
const D = 768;

/**
 * GPT-2's tensors (Conv1D weights stored in x out), with `prefix` (`transformer.` as in
 * GPT2LMHeadModel's state dict; '' as in the hub's model.safetensors). The vocabulary is cut
 * to 1024 rows to keep the file small: no adapter touches wte.
 */
function gpt2Tensors(prefix: string): Array<{ name: string; shape: number[] }> {
  const out: Array<{ name: string; shape: number[] }> = [
    { name: `${prefix}wte.weight`, shape: [1024, D] },
    { name: `${prefix}wpe.weight`, shape: [1024, D] },
    { name: `${prefix}ln_f.weight`, shape: [D] },
    { name: `${prefix}ln_f.bias`, shape: [D] },
  ];
  for (let l = 0; l < LAYERS; l++) {
    const h = `${prefix}h.${l}`;
    out.push(
      { name: `${h}.ln_1.weight`, shape: [D] },
      { name: `${h}.ln_1.bias`, shape: [D] },
      { name: `${h}.attn.c_attn.weight`, shape: [D, 3 * D] },
      { name: `${h}.attn.c_attn.bias`, shape: [3 * D] },
      { name: `${h}.attn.c_proj.weight`, shape: [D, D] },
      { name: `${h}.attn.c_proj.bias`, shape: [D] },
      { name: `${h}.mlp.c_proj.weight`, shape: [4 * D, D] },
      { name: `${h}.mlp.c_proj.bias`, shape: [D] },
    );
  }
  return out;
}

/** Uniform values in [-0.05, 0.05) from a xorshift32 seeded by `seed` (fast: tensors are large). */
function values(count: number, seed: number): Float32Array {
  const out = new Float32Array(count);
  let s = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < count; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = ((s >>> 0) / 4294967296 - 0.5) * 0.1;
  }
  return out;
}

async function writeBase(file: string, prefix: string): Promise<void> {
  const entries: SafetensorsEntry[] = gpt2Tensors(prefix).map((t, i) => ({
    name: t.name,
    shape: t.shape,
    data: () => values(t.shape.reduce((n, d) => n * d, 1), i + 1),
  }));
  await writeSafetensors(file, entries, { metadata: { format: 'pt' } });
}

/**
 * Checks `out` against `base`: the tensors that differ are exactly `expected`'s keys, and
 * each of those is W + sum_i c_i (B_i A_i)^T within (r + 4) u (|W| + sum |c B A|): every
 * entry for the layers in `whole`, `samples` random entries for the others.
 */
async function checkMerge(
  t: ExecutionContext,
  baseFile: string,
  outFile: string,
  expected: Map<string, Array<{ m: LoraModule; c: number }>>,
  label: string,
  whole: (key: string) => boolean,
  samples = 2000,
): Promise<void> {
  const base = await openSafetensors(baseFile);
  const out = await openSafetensors(outFile);
  try {
    t.deepEqual([...out.tensors.keys()], [...base.tensors.keys()], `${label}: same tensors in the same order`);
    t.deepEqual(out.metadata, base.metadata);
    const changed: string[] = [];
    let worst = 0;
    let checked = 0;
    for (const [key, info] of base.tensors) {
      const outInfo = out.tensors.get(key);
      t.is(outInfo?.offset, info.offset, `${label}: ${key} offset`);
      t.is(outInfo?.dtype, info.dtype);
      const [a, b] = await Promise.all([base.readRaw(key), out.readRaw(key)]);
      if (Buffer.compare(a.bytes, b.bytes) !== 0) changed.push(key);
      const terms = expected.get(key);
      if (terms === undefined) continue;
      const w = new Float32Array(a.bytes.buffer, 0, a.bytes.byteLength / 4);
      const w1 = new Float32Array(b.bytes.buffer, 0, b.bytes.byteLength / 4);
      const [dIn, dOut] = info.shape as [number, number];
      const check = (i: number, j: number) => {
        let delta = 0;
        let magnitude = Math.abs(w[i * dOut + j] as number);
        let rank = 0;
        for (const { m, c } of terms) {
          for (let k = 0; k < m.rank; k++) {
            const p = c * (m.A.data[k * dIn + i] as number) * (m.B.data[j * m.rank + k] as number);
            delta += p;
            magnitude += Math.abs(p);
          }
          rank += m.rank;
        }
        const error = Math.abs((w1[i * dOut + j] as number) - (w[i * dOut + j] as number) - delta);
        const bound = (rank + 4) * U32 * magnitude;
        worst = Math.max(worst, error / bound);
        checked++;
        if (error > bound) t.fail(`${label}: ${key}[${i}][${j}]: changed by ${(w1[i * dOut + j] as number) - (w[i * dOut + j] as number)}, expected ${delta}`);
      };
      if (whole(key)) {
        for (let i = 0; i < dIn; i++) for (let j = 0; j < dOut; j++) check(i, j);
      } else {
        let s = key.length * 7919 + 1;
        for (let n = 0; n < samples; n++) {
          s = (s * 1103515245 + 12345) >>> 0;
          const at = s % (dIn * dOut);
          check(Math.floor(at / dOut), at % dOut);
        }
      }
    }
    t.deepEqual(changed.sort(), [...expected.keys()].sort(), `${label}: exactly the adapted tensors change`);
    t.log(`${label}: ${changed.length} tensors changed, ${checked} entries checked, worst error / bound ${worst.toPrecision(3)}`);
  } finally {
    await Promise.all([base.close(), out.close()]);
  }
}

if (!existsSync(gpt2)) {
  test('merge on real adapters: skipped, ../shared/realdata is absent', (t) => {
    t.log(`no real adapters at ${gpt2}; the merge tests on generated checkpoints cover the same code`);
    t.pass();
  });
} else {
  const work = { dir: '', base: '', hubBase: '' };
  const loaded = new Map<string, LoraAdapter>();

  test.before(async () => {
    work.dir = await mkdtemp(path.join(os.tmpdir(), 'eigenlorax-merge-real-'));
    work.base = path.join(work.dir, 'gpt2.safetensors');
    work.hubBase = path.join(work.dir, 'gpt2-hub.safetensors');
    await writeBase(work.base, 'transformer.');
    for (const name of Object.keys(adapters)) loaded.set(name, await loadAdapter(path.join(gpt2, name)));
  });
  test.after.always(async () => {
    if (work.dir) await rm(work.dir, { recursive: true, force: true });
  });

  test.serial('each GPT-2 adapter changes exactly its 12 (or 36) weights, each by s (B A)^T', async (t) => {
    for (const [name, { alpha, cProj }] of Object.entries(adapters)) {
      const adapter = loaded.get(name) as LoraAdapter;
      t.is(adapter.modules.size, cProj ? 36 : 12, name);
      const expected = new Map<string, Array<{ m: LoraModule; c: number }>>();
      for (const m of adapter.modules.values()) {
        t.true(m.fanInFanOut && m.rank === 8 && m.scale === alpha / 8, `${name}: ${m.name}`);
        expected.set(`${m.name}.weight`, [{ m, c: m.scale }]);
      }
      const output = path.join(work.dir, `${name}.safetensors`);
      const report = await mergeIntoBase({ base: work.base, adapters: [path.join(gpt2, name)], output });
      t.is(report.tensors.touched, cProj ? 36 : 12, name);
      t.true(report.merged.every((m) => m.modules.length === 1 && m.modules[0]?.transposed === true && m.modules[0]?.coefficient === alpha / 8));
      const extras = report.adapters[0]?.extrasSkipped ?? [];
      t.log(`${name}: scale ${alpha / 8}, ${report.seconds.toFixed(2)} s, extras not merged: ${extras.join(', ') || '-'}`);
      await checkMerge(t, work.base, output, expected, name, (key) => key.startsWith('transformer.h.0.'));
      await rm(output);
    }
  });

  test.serial('all seven at once, weighted, into the hub naming (h.N..., no transformer. prefix), equal the weighted sum', async (t) => {
    await writeBase(work.hubBase, '');
    const names = Object.keys(adapters);
    const weights = names.map((_, i) => (i % 2 === 0 ? 1 : -0.5) / names.length);
    const expected = new Map<string, Array<{ m: LoraModule; c: number }>>();
    names.forEach((name, i) => {
      for (const m of (loaded.get(name) as LoraAdapter).modules.values()) {
        const key = `${m.name.slice('transformer.'.length)}.weight`;
        expected.set(key, [...(expected.get(key) ?? []), { m, c: (weights[i] as number) * m.scale }]);
      }
    });
    const output = path.join(work.dir, 'all.safetensors');
    const report = await mergeIntoBase({
      base: work.hubBase,
      adapters: names.map((name, i) => ({ adapter: loaded.get(name) as LoraAdapter, weight: weights[i] as number })),
      output,
    });
    t.is(report.tensors.touched, 36);
    t.is(report.merged.find((m) => m.key === 'h.0.attn.c_attn.weight')?.modules.length, 7);
    t.is(report.merged.find((m) => m.key === 'h.0.mlp.c_proj.weight')?.modules.length, 2);
    await checkMerge(t, work.hubBase, output, expected, 'seven adapters', (key) => key === 'h.0.attn.c_attn.weight', 500);
    t.deepEqual((await readdir(work.dir)).filter((f) => f.endsWith('.tmp')), []);
  });
}
