/**
 * The CLI reaching the newer library features, end to end against the library on the same
 * inputs: `extract` (extractLora), `convert` (convertAdapter), `export --format gguf`
 * (exportAdapter), `build --shard` in three processes + `gather` against a one-process
 * build (byte for byte), `build --memory-budget` (streamed modules), `analyze --held-out`.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'ava';
import {
  analyzeAdapters,
  buildSubspace,
  convertAdapter,
  exportAdapter,
  extractLora,
  loadCoefficients,
  loadSubspace,
  saveAdapter,
  type LoraAdapter,
} from '../lib/index.js';
import { native } from '../lib/native.js';
import { basePeftConfig, peftTensors, writePeft, writeTensors } from './helpers/adapter-fixtures.js';
import { eigenlorax } from './helpers/cli.js';
import { floatTensor, tempDir } from './helpers/merge-fixtures.js';
import { freshSeed } from './helpers/random.js';
import { memoryAdapter, plantedBases, plantedFactors } from './helpers/subspace-fixtures.js';

/** Every file under `dir` (relative path -> bytes). */
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

function sameFiles(t: import('ava').ExecutionContext, a: Map<string, Buffer>, b: Map<string, Buffer>, what: string) {
  t.deepEqual([...b.keys()].sort(), [...a.keys()].sort(), what);
  for (const [name, bytes] of a) t.true(b.get(name)?.equals(bytes) === true, `${what}: ${name} differs`);
}

const D_IN = 48;
const D_OUT = 40;
const NAMES = ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.1.self_attn.q_proj', 'model.layers.1.mlp.up_proj'];

/** Adapters sharing planted subspaces per module, saved as PEFT folders (bf16 factors). */
async function writeZoo(dir: string, seed: number, n: number): Promise<string[]> {
  const planted = NAMES.map((_, m) => plantedBases(D_IN, D_OUT, 5, 5, seed + 101 * m));
  const paths: string[] = [];
  for (let i = 0; i < n; i++) {
    const adapter: LoraAdapter = memoryAdapter(
      NAMES.map((name, m) => {
        const f = plantedFactors(planted[m]!, 4, seed + 1000 * i + m, 0.3);
        return { name, A: f.A, B: f.B, alpha: 8 + (i % 2) * 8 };
      }),
    );
    const p = path.join(dir, `adapter-${i}`);
    await saveAdapter(adapter, p, { format: 'peft', dtype: 'BF16' });
    paths.push(p);
  }
  return paths;
}

/** base and tuned checkpoints whose difference is a planted rank-3 update per weight, plus noise. */
async function checkpoints(dir: string, seed: number): Promise<{ base: string; tuned: string }> {
  const base = [
    floatTensor('model.layers.0.self_attn.q_proj.weight', [32, 24], seed + 1),
    floatTensor('model.layers.0.self_attn.v_proj.weight', [16, 24], seed + 2),
    floatTensor('model.layers.0.mlp.up_proj.weight', [40, 24], seed + 3),
    floatTensor('model.norm.weight', [24], seed + 4),
  ];
  const tuned = base.map((b, i) => {
    if (b.shape.length < 2) return b;
    const rows = b.shape[0]!;
    const cols = b.shape[1]!;
    const u = floatTensor('u', [rows, 3], seed + 10 + i, 'F32', 1).data as Float32Array;
    const v = floatTensor('v', [3, cols], seed + 20 + i, 'F32', 1).data as Float32Array;
    const noise = floatTensor('n', [rows, cols], seed + 30 + i, 'F32', 1e-4).data as Float32Array;
    const data = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < cols; c++) {
        let s = 0;
        for (let k = 0; k < 3; k++) s += u[r * 3 + k]! * v[k * cols + c]! * (3 - k);
        data[r * cols + c] = (b.data as Float32Array)[r * cols + c]! + s + noise[r * cols + c]!;
      }
    return { ...b, data };
  });
  const paths = { base: path.join(dir, 'base.safetensors'), tuned: path.join(dir, 'tuned.safetensors') };
  await writeTensors(paths.base, base);
  await writeTensors(paths.tuned, tuned);
  return paths;
}

test('extract: the same adapter bytes and numbers as extractLora; --json is its report; identical checkpoints exit 1', async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const { base, tuned } = await checkpoints(dir, seed % 100_000);
  const flags = ['--threshold', '0.999', '--rank', '6', '--modules', 'q_proj,up_proj', '--seed', '3'];
  const cli = await eigenlorax(['extract', '--base', base, '--tuned', tuned, ...flags, '-o', path.join(dir, 'cli')]);
  t.is(cli.code, 0, cli.stderr);
  const report = await extractLora({ base, tuned, out: path.join(dir, 'lib'), threshold: 0.999, rank: 6, modules: ['q_proj', 'up_proj'], seed: 3 });
  sameFiles(t, await filesOf(path.join(dir, 'lib')), await filesOf(path.join(dir, 'cli')), `seed ${seed}`);
  t.deepEqual(report.modules.map((m) => m.name).sort(), ['model.layers.0.mlp.up_proj', 'model.layers.0.self_attn.q_proj']);
  for (const m of report.modules) {
    t.regex(cli.stdout, new RegExp(`^  ${m.name.replace(/\./g, '\\.')} +${m.rank} +${m.captured.toFixed(4)} +${m.relativeError.toFixed(4)} `, 'm'), m.name);
  }
  t.regex(cli.stdout, new RegExp(`total +captured ${report.total.captured.toFixed(4)}, relative error ${report.total.relativeError.toFixed(4)}`));

  const json = await eigenlorax(['extract', '--base', base, '--tuned', tuned, ...flags, '--format', 'gguf', '--arch', 'qwen2', '--dtype', 'f16', '-o', path.join(dir, 'k.gguf'), '--json']);
  t.is(json.code, 0, json.stderr);
  const parsed = JSON.parse(json.stdout) as { format: string; files: string[]; modules: Array<{ name: string; rank: number; captured: number }>; total: { captured: number } };
  t.is(parsed.format, 'gguf');
  t.deepEqual(parsed.files, [path.join(dir, 'k.gguf')]);
  await extractLora({ base, tuned, out: path.join(dir, 'lib.gguf'), threshold: 0.999, rank: 6, modules: ['q_proj', 'up_proj'], seed: 3, format: 'gguf', dtype: 'F16', gguf: { architecture: 'qwen2' } });
  t.true((await readFile(path.join(dir, 'k.gguf'))).equals(await readFile(path.join(dir, 'lib.gguf'))), 'GGUF bytes');
  t.deepEqual(
    parsed.modules.map((m) => [m.name, m.rank, m.captured]),
    report.modules.map((m) => [m.name, m.rank, m.captured]),
  );
  t.is(parsed.total.captured, report.total.captured);

  // Without --arch the HF names have no GGUF names: the library's refusal, exit 1.
  const noArch = await eigenlorax(['extract', '--base', base, '--tuned', tuned, '--rank', '2', '--format', 'gguf', '-o', path.join(dir, 'n.gguf')]);
  t.is(noArch.code, 1, noArch.stdout);
  t.regex(noArch.stderr, /\(ERR_[A-Z_]+\)\n$/);
  await t.throwsAsync(extractLora({ base, tuned, out: path.join(dir, 'bad.gguf'), rank: 2, format: 'gguf', gguf: 5 as never }), { code: 'ERR_INVALID_ARGUMENT' });

  const same = await eigenlorax(['extract', '--base', base, '--tuned', base, '--rank', '2', '-o', path.join(dir, 'none'), '--json']);
  t.is(same.code, 1);
  t.regex(same.stderr, /\(ERR_NOTHING_TO_EXTRACT\)\n$/);
  t.is((JSON.parse(same.stdout) as { error: { code: string } }).error.code, 'ERR_NOTHING_TO_EXTRACT');
});

const llamaModules = [
  { name: 'model.layers.0.self_attn.q_proj', rank: 4, in: 16, out: 16 },
  { name: 'model.layers.0.self_attn.k_proj', rank: 4, in: 16, out: 8 },
  { name: 'model.layers.0.self_attn.v_proj', rank: 4, in: 16, out: 8 },
  { name: 'model.layers.0.mlp.down_proj', rank: 2, in: 24, out: 16 },
];

test('convert: PEFT -> GGUF -> PEFT byte-identical to convertAdapter with the same --arch and head counts', async (t) => {
  const dir = await tempDir(t);
  const { dir: peft } = await writePeft(path.join(dir, 'peft'), peftTensors(llamaModules), { ...basePeftConfig(), r: 4, lora_alpha: 8, rank_pattern: { down_proj: 2 } });
  const gguf = { architecture: 'llama', headCount: 4, headCountKv: 2 };
  const ggufFlags = ['--arch', 'llama', '--head-count', '4', '--head-count-kv', '2'];
  await convertAdapter(peft, path.join(dir, 'lib.gguf'), { format: 'gguf', gguf });
  const cli = await eigenlorax(['convert', peft, '-o', path.join(dir, 'cli.gguf'), '--format', 'gguf', ...ggufFlags]);
  t.is(cli.code, 0, cli.stderr);
  t.regex(cli.stdout, /^converted .* to gguf\n/);
  t.true((await readFile(path.join(dir, 'cli.gguf'))).equals(await readFile(path.join(dir, 'lib.gguf'))));

  await convertAdapter(path.join(dir, 'lib.gguf'), path.join(dir, 'back-lib'), { format: 'peft', gguf, dtype: 'F16' });
  const back = await eigenlorax(['convert', path.join(dir, 'cli.gguf'), '-o', path.join(dir, 'back-cli'), '--format', 'peft', '--dtype', 'F16', ...ggufFlags, '--json']);
  t.is(back.code, 0, back.stderr);
  t.deepEqual(JSON.parse(back.stdout), { input: path.join(dir, 'cli.gguf'), format: 'peft', files: (await convertAdapter(path.join(dir, 'lib.gguf'), path.join(dir, 'back-cli'), { format: 'peft', gguf, dtype: 'F16' })).files });
  sameFiles(t, await filesOf(path.join(dir, 'back-lib')), await filesOf(path.join(dir, 'back-cli')), 'GGUF -> PEFT');

  // Llama q_proj without head counts: the library's refusal, exit 1, nothing written.
  const noHeads = await eigenlorax(['convert', peft, '-o', path.join(dir, 'x.gguf'), '--format', 'gguf', '--arch', 'llama']);
  t.is(noHeads.code, 1, noHeads.stdout);
  t.regex(noHeads.stderr, /q_proj.*\(ERR_[A-Z_]+\)\n$/s);
  const usage: Array<[string[], RegExp]> = [
    [['convert', peft, '-o', path.join(dir, 'x'), '--format', 'gguf'], /--format gguf writes one \.gguf file/],
    [['convert', peft, '-o', path.join(dir, 'x'), '--format', 'peft', '--arch', 'llama'], /--arch, --gguf-base and --head-count\* go with --format gguf/],
    [['convert', peft, '-o', path.join(dir, 'x.gguf')], /required option '--format <format>' not specified/],
    [['convert', peft, '-o', path.join(dir, 'x.gguf'), '--format', 'gguf', '--arch', 'falcon'], /--arch must be one of llama, mistral, qwen2, gpt2, not "falcon"/],
    [['convert', peft, '-o', path.join(dir, 'x.gguf'), '--format', 'gguf', '--head-count', '0'], /--head-count expects an integer >= 1, not "0"/],
  ];
  for (const [args, message] of usage) {
    const r = await eigenlorax(args);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, message, args.join(' '));
  }
});

test('export --format gguf: the same bytes as exportAdapter; the output must be a .gguf file', async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const paths = await writeZoo(dir, seed % 100_000, 4);
  const sub = path.join(dir, 'sub');
  const built = await eigenlorax(['build', ...paths, '-o', sub, '-k', '3', '--quiet']);
  t.is(built.code, 0, built.stderr);
  const subspace = await loadSubspace(sub);
  const file = path.join(sub, 'coefficients', 'adapter-2.safetensors');
  const coefficients = await loadCoefficients(file, subspace);
  await exportAdapter(subspace, coefficients, path.join(dir, 'lib.gguf'), { format: 'gguf', gguf: { architecture: 'llama', headCount: 4, headCountKv: 4 } });
  const cli = await eigenlorax(['export', sub, file, '-o', path.join(dir, 'cli.gguf'), '--format', 'gguf', '--arch', 'llama', '--head-count', '4', '--head-count-kv', '4']);
  t.is(cli.code, 0, cli.stderr);
  t.regex(cli.stdout, /as gguf\n/);
  t.true((await readFile(path.join(dir, 'cli.gguf'))).equals(await readFile(path.join(dir, 'lib.gguf'))), `seed ${seed}`);
  const folder = await eigenlorax(['export', sub, file, '-o', path.join(dir, 'out'), '--format', 'gguf', '--arch', 'qwen2']);
  t.is(folder.code, 2);
  t.regex(folder.stderr, /--format gguf writes one \.gguf file, not ".*out"/);
  const archForPeft = await eigenlorax(['export', sub, file, '-o', path.join(dir, 'p'), '--arch', 'qwen2']);
  t.is(archForPeft.code, 2);
  t.regex(archForPeft.stderr, /go with --format gguf/);
});

test('build --shard i/n in three processes, then gather: byte-identical to a one-process build; mismatched shards exit 1 naming the shard and field', async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const paths = await writeZoo(dir, seed % 100_000, 5);
  const flags = ['-k', '3', '--seed', '5', '--quiet'];
  const whole = await eigenlorax(['build', ...paths, '-o', path.join(dir, 'whole'), ...flags]);
  t.is(whole.code, 0, whole.stderr);
  t.regex(whole.stdout, /stored +adapters [\s\S]*?\(BF16\) against basis [\s\S]*?\(F32\) = [\s\S]*?x\n/);
  t.regex(whole.stdout, /streamed +none/);
  const shards = [0, 1, 2].map((i) => path.join(dir, `shard-${i}`));
  // As an Indexed Job runs them: the index from the environment, one process each, at once.
  const runs = await Promise.all(
    shards.map((out, i) => eigenlorax(['build', ...paths, '-o', out, ...flags, '--shard', `${i}/3`], { env: { ...process.env, JOB_COMPLETION_INDEX: String(i) } })),
  );
  for (const [i, r] of runs.entries()) {
    t.is(r.code, 0, r.stderr);
    t.regex(r.stdout, new RegExp(`shard +${i}/3: \\d+ of ${NAMES.length} modules`));
  }
  const gathered = await eigenlorax(['gather', ...[...shards].reverse(), '-o', path.join(dir, 'gathered')]);
  t.is(gathered.code, 0, gathered.stderr);
  t.regex(gathered.stdout, new RegExp(`^gathered 3 shards -> .*\\n.*modules +${NAMES.length}\\n`, 's'));
  sameFiles(t, await filesOf(path.join(dir, 'whole')), await filesOf(path.join(dir, 'gathered')), `seed ${seed}`);
  // The CLI's one-process folder is also the library's build written by writeBuildFolder: same subspace id.
  const lib = await buildSubspace(paths, { components: 3, seed: 5 });
  t.is((await loadSubspace(path.join(dir, 'whole'))).id, lib.id);

  const other = await eigenlorax(['build', ...paths, '-o', path.join(dir, 'other-1'), '-k', '3', '--seed', '6', '--quiet', '--shard', '1/3']);
  t.is(other.code, 0, other.stderr);
  const mismatch = await eigenlorax(['gather', shards[0]!, path.join(dir, 'other-1'), shards[2]!, '-o', path.join(dir, 'bad'), '--json']);
  t.is(mismatch.code, 1);
  t.regex(mismatch.stderr, /other-1: .*\(ERR_SHARD_MISMATCH\)\n$/);
  t.is((JSON.parse(mismatch.stdout) as { error: { code: string } }).error.code, 'ERR_SHARD_MISMATCH');
  const notShard = await eigenlorax(['gather', path.join(dir, 'whole'), '-o', path.join(dir, 'bad')]);
  t.is(notShard.code, 1);
  t.regex(notShard.stderr, /whole: shard\.json: missing.*\(ERR_SHARD_MISMATCH\)/);

  const usage: Array<[string[], RegExp]> = [
    [['build', paths[0]!, '-o', path.join(dir, 'x'), '--shard', '3/3'], /--shard expects i\/n with 0 <= i < n \(such as 0\/4\), not "3\/3"/],
    [['build', paths[0]!, '-o', path.join(dir, 'x'), '--shard', '/4'], /--shard expects i\/n/],
    [['build', paths[0]!, '-o', path.join(dir, 'x'), '--memory-budget', '4 parsecs'], /--memory-budget expects a size such as 512MB/],
    [['gather', '-o', path.join(dir, 'x')], /gather needs the shard folders/],
  ];
  for (const [args, message] of usage) {
    const r = await eigenlorax(args);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, message, args.join(' '));
  }
});

const hasStreams = typeof (native as unknown as Record<string, unknown>).createModuleStream === 'function';

(hasStreams ? test : test.skip)(`build --memory-budget: a tiny budget streams every module and reports it; the numbers match the library's${hasStreams ? '' : ' (skipped: this addon has no createModuleStream; rebuild it)'}`, async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  // 8 adapters of rank 4: stacks of 32 rows, past rsvd's exact path (which the stream does not repeat) at K = 3.
  const paths = await writeZoo(dir, seed % 100_000, 8);
  const r = await eigenlorax(['build', ...paths, '-o', path.join(dir, 'out'), '-k', '3', '--memory-budget', '1KB', '--json']);
  t.is(r.code, 0, r.stderr);
  const summary = JSON.parse(r.stdout) as { streamedModules: string[]; inSampleError: number; storage: { ratio: number } };
  const lib = await buildSubspace(paths, { components: 3, memoryBudget: '1KB' });
  t.deepEqual(summary.streamedModules, lib.report!.streamedModules);
  t.is(summary.streamedModules.length, NAMES.length);
  t.is(summary.inSampleError, lib.report!.inSampleError);
  t.is(summary.storage.ratio, lib.report!.storage!.ratio);
  const text = await eigenlorax(['build', ...paths, '-o', path.join(dir, 'text'), '-k', '3', '--memory-budget', '1KB', '--quiet']);
  t.regex(text.stdout, new RegExp(`streamed +${NAMES.length} modules out of core: `));
});

test('analyze --held-out: loo and k folds give the library\'s held-out errors; a bad value exits 2', async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const paths = await writeZoo(dir, seed % 100_000, 4);
  for (const [flag, heldOut] of [
    ['2', 2],
    ['loo', 'leave-one-out'],
  ] as const) {
    const r = await eigenlorax(['analyze', ...paths, '-k', '2', '--held-out', flag, '--json']);
    t.is(r.code, 0, r.stderr);
    const a = JSON.parse(r.stdout) as { heldOutError: number; perAdapter: Array<{ heldOutError: number | null }> };
    const lib = await analyzeAdapters(paths, { components: 2, heldOut });
    // Equal to the last bit (the modules finish in any order; the sums follow the modules' order).
    t.is(a.heldOutError, lib.heldOutError, `${flag}, seed ${seed}`);
    t.deepEqual(
      a.perAdapter.map((x) => x.heldOutError),
      lib.perAdapter.map((x) => x.heldOutError),
      `${flag}, seed ${seed}`,
    );
  }
  for (const [value, message] of [
    ['1', /--held-out expects an integer >= 2, not "1"/],
    ['5', /--held-out 5 folds need at least 5 adapters, not 4/],
    ['half', /--held-out expects auto, loo or a number of folds >= 2, not "half"/],
  ] as const) {
    const r = await eigenlorax(['analyze', ...paths, '--held-out', value]);
    t.is(r.code, 2, value);
    t.regex(r.stderr, message, value);
  }
});
