/**
 * The real adapters in ../shared/realdata (7 PEFT GPT-2 adapters, 3 diffusers SD
 * adapters; see its README): they load, with the shapes, ranks, scales, names and extras the
 * README states, round-trip byte for byte, and `eigenlorax inspect --json` reports them.
 * When the folder is absent a single test says so and passes.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadAdapter, saveAdapter, type LoraAdapter } from '../lib/index.js';
import { eigenlorax } from './helpers/cli.js';
import { withoutConfigDigest } from './helpers/safetensors-fixtures.js';

const repoRoot = path.resolve(fileURLToPath(new URL('../..', import.meta.url)));
const realdata = path.resolve(repoRoot, '..', 'shared', 'realdata');

/** The five c_attn-only GPT-2 adapters and their lora_alpha (README table). */
const cAttnOnly: Record<string, number> = {
  'anirudh-ak__peft-gpt2__emotion6': 8,
  'greulist137__Fine-Tuning-Gen-AI-Model__dair-emotion6': 8,
  'stathopoan__Apply-Lightweight-Fine-Tuning-to-a-Foundation-LLM-Model__dair-emotion6': 16,
  'yzzhome__Lightweight-Fine-Tuning__yelp5': 6,
  'ybriz__generative-ai__imdb': 32,
};
/** The two that also adapt attn.c_proj and mlp.c_proj, lora_alpha 32. */
const cAttnAndCProj = ['abrhaleyarefaine1997__gpt2-tigrinya-lora__tigrinya-clm', 'gurvineet__peft-implementation__app-reviews-rating'];
/** Score-head rows of the classification adapters (extras). */
const scoreRows: Record<string, number> = {
  'anirudh-ak__peft-gpt2__emotion6': 6,
  'greulist137__Fine-Tuning-Gen-AI-Model__dair-emotion6': 6,
  'stathopoan__Apply-Lightweight-Fine-Tuning-to-a-Foundation-LLM-Model__dair-emotion6': 6,
  'yzzhome__Lightweight-Fine-Tuning__yelp5': 5,
  'ybriz__generative-ai__imdb': 2,
  'gurvineet__peft-implementation__app-reviews-rating': 6,
};
const diffusersFiles = {
  processor: [
    'stable-diffusion-v1-5/catundchat__stable-diffusion-v1.5-lora__animal-style',
    'stable-diffusion-v1-4/wellCh4n__pokemon-diffusers__pokemon',
  ],
  unetLoraDown: ['stable-diffusion-v1-5/mvclab-ntust-course__course3-B11115019__hw-lion'],
};
const weights = (folder: string) => path.join(realdata, folder, 'pytorch_lora_weights.safetensors');
const gpt2 = (name: string) => path.join(realdata, 'gpt2', name);

if (!existsSync(realdata)) {
  test('real adapters: skipped', (t) => {
    t.log(`${realdata} does not exist: the real-adapter tests are skipped (they need ../shared/realdata, see DESIGN.md §5)`);
    t.pass();
  });
} else {
  const loaded = new Map<string, Promise<LoraAdapter>>();
  const load = (p: string) => {
    if (!loaded.has(p)) loaded.set(p, loadAdapter(p));
    return loaded.get(p) as Promise<LoraAdapter>;
  };
  const all = [
    ...Object.keys(cAttnOnly).map(gpt2),
    ...cAttnAndCProj.map(gpt2),
    ...[...diffusersFiles.processor, ...diffusersFiles.unetLoraDown].map(weights),
  ];

  test('real adapters: all ten load', async (t) => {
    t.is(all.length, 10);
    for (const p of all) {
      const adapter = await load(p);
      t.true(adapter.modules.size > 0, p);
    }
  });

  test('real adapters: the five c_attn GPT-2 adapters have 12 rank-8 modules, A 8 x 768, B 2304 x 8, scale alpha / 8', async (t) => {
    for (const [name, alpha] of Object.entries(cAttnOnly)) {
      const adapter = await load(gpt2(name));
      t.is(adapter.format, 'peft', name);
      t.is(adapter.baseModel, 'gpt2', name);
      t.deepEqual(
        [...adapter.modules.keys()],
        Array.from({ length: 12 }, (_, i) => `transformer.h.${i}.attn.c_attn`),
        name,
      );
      for (const m of adapter.modules.values()) {
        t.deepEqual([m.rank, m.A.rows, m.A.cols, m.B.rows, m.B.cols, m.layout, m.fanInFanOut], [8, 8, 768, 2304, 8, 'linear', true], `${name} ${m.name}`);
        t.deepEqual([m.alpha, m.scale], [alpha, alpha / 8], `${name} ${m.name}`);
      }
    }
  });

  test('real adapters: the two c_attn + c_proj GPT-2 adapters have 36 modules', async (t) => {
    for (const name of cAttnAndCProj) {
      const adapter = await load(gpt2(name));
      t.is(adapter.modules.size, 36, name);
      for (let i = 0; i < 12; i++) {
        const shapes = (m: string) => {
          const x = adapter.modules.get(`transformer.h.${i}.${m}`);
          return [x?.A.rows, x?.A.cols, x?.B.rows, x?.B.cols, x?.scale, x?.fanInFanOut];
        };
        t.deepEqual(shapes('attn.c_attn'), [8, 768, 2304, 8, 4, true], `${name} h.${i}.attn.c_attn`);
        t.deepEqual(shapes('attn.c_proj'), [8, 768, 768, 8, 4, true], `${name} h.${i}.attn.c_proj`);
        t.deepEqual(shapes('mlp.c_proj'), [8, 3072, 768, 8, 4, true], `${name} h.${i}.mlp.c_proj`);
      }
    }
  });

  test('real adapters: score.weight heads are extras, not LoRA modules', async (t) => {
    for (const name of [...Object.keys(cAttnOnly), ...cAttnAndCProj]) {
      const adapter = await load(gpt2(name));
      const rows = scoreRows[name];
      if (rows === undefined) {
        t.is(adapter.extras.size, 0, name);
      } else {
        t.deepEqual([...adapter.extras.keys()], ['base_model.model.score.weight'], name);
        const head = adapter.extras.get('base_model.model.score.weight');
        t.deepEqual([head?.dtype, head?.shape], ['F32', [rows, 768]], name);
      }
      t.false([...adapter.modules.keys()].some((m) => m.includes('score')), name);
    }
  });

  test('real adapters: the diffusers files give 128 rank-4 modules, the same names whichever key spelling', async (t) => {
    const names: string[][] = [];
    for (const folder of [...diffusersFiles.processor, ...diffusersFiles.unetLoraDown]) {
      const adapter = await load(weights(folder));
      t.is(adapter.format, 'diffusers', folder);
      t.is(adapter.modules.size, 128, folder);
      for (const m of adapter.modules.values()) {
        t.deepEqual([m.rank, m.alpha, m.scale], [4, 4, 1], `${folder} ${m.name}`);
        t.true(m.name.startsWith('unet.'), m.name);
      }
      names.push([...adapter.modules.keys()]);
    }
    t.deepEqual(names[1], names[0]);
    t.deepEqual(names[2], names[0]);
    const first = await load(weights(diffusersFiles.processor[0] as string));
    t.true(first.modules.get('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q')?.keys.A.includes('.processor.to_q_lora.down.weight'));
    t.true(first.modules.has('unet.up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0'));
  });

  test('real adapters: saving in their own format reproduces the files byte for byte', async (t) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'eigenlorax-realdata-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    // Buffer.equals: ava's deepEqual is slow on megabytes.
    for (const [i, p] of all.entries()) {
      const adapter = await load(p);
      const out = path.join(dir, String(i));
      const saved = await saveAdapter(adapter, out, { format: adapter.format });
      const written = saved.files.find((f) => f.endsWith('.safetensors')) as string;
      const original = adapter.source?.files.find((f) => f.endsWith('.safetensors')) as string;
      // A PEFT save adds eigenlorax.config_sha256 (the torn-folder check); the rest is the file.
      const bytes = adapter.format === 'peft' ? await withoutConfigDigest(written) : await readFile(written);
      t.true(bytes.equals(await readFile(original)), p);
      if (adapter.format === 'peft') t.deepEqual((await loadAdapter(out)).config, adapter.config, p);
    }
  });

  test('real adapters: eigenlorax inspect --json reports each one', async (t) => {
    const { code, stdout, stderr } = await eigenlorax(['inspect', '--json', ...all]);
    t.is(code, 0, stderr);
    const reports = JSON.parse(stdout) as Array<Record<string, unknown>>;
    t.is(reports.length, 10);
    for (const [i, report] of reports.entries()) {
      t.is(report.path, all[i]);
      t.is(report.error, undefined, String(report.path));
    }
    const byPath = new Map(reports.map((r) => [r.path, r]));
    const imdb = byPath.get(gpt2('ybriz__generative-ai__imdb'));
    t.like(imdb, { format: 'peft', baseModel: 'gpt2', modules: 12, ranks: [{ value: 8, count: 12 }], scales: [{ value: 4, count: 12 }], fanInFanOut: 12 });
    t.is(imdb?.loraParameters, 12 * 8 * (768 + 2304));
    t.deepEqual((imdb?.extras as Array<{ key: string }>).map((e) => e.key), ['base_model.model.score.weight']);
    const lion = byPath.get(weights(diffusersFiles.unetLoraDown[0] as string));
    t.like(lion, { format: 'diffusers', modules: 128, ranks: [{ value: 4, count: 128 }], dtypes: [{ value: 'F32', count: 256 }] });
  });
}
