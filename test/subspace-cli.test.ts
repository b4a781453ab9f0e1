/**
 * `eigenlorax build / project / export / analyze`, run as child processes the way a user
 * runs them, on PEFT folders generated here (factors from a planted subspace plus noise):
 * the files they write reload (loadSubspace, loadCoefficients, loadAdapter) and agree with
 * what they print; --json parses; bad arguments exit 2 with the usage, library errors
 * exit 1 with the message and the code.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { loadAdapter, loadCoefficients, loadSubspace, projectAdapter } from '../lib/index.js';
import { tempDir } from './helpers/adapter-fixtures.js';
import { eigenlorax, type CliResult as Result } from './helpers/cli.js';
import { freshSeed } from './helpers/random.js';
import { writePlantedPeft } from './helpers/subspace-fixtures.js';



const MODULES = ['unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q', 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v'];
const D = 32;
const RANK = 4;

/** `count` PEFT folders named task-<i>, factors from one planted 6-dimensional subspace per module and side. */
const writeAdapters = (dir: string, count: number, seed: number): Promise<string[]> =>
  writePlantedPeft(dir, count, seed, { modules: MODULES, d: D, rank: RANK, planted: 6, noise: 0.02, alpha: 8, targetModules: ['to_q', 'to_v'], baseModel: 'tiny-sd' });

function usageExit(t: import('ava').ExecutionContext, r: Result, pattern: RegExp, what: string): void {
  t.is(r.code, 2, `${what}: ${r.stderr}`);
  t.regex(r.stderr, pattern, what);
  t.regex(r.stderr, /Usage:/, what);
  t.is(r.stdout, '', what);
}

test('build, project, export: files that reload, numbers that agree, text and --json', async (t) => {
  const dir = await tempDir(t);
  const seed = freshSeed();
  const adapters = await writeAdapters(dir, 5, seed);
  const out = path.join(dir, 'subspace');

  // build (JSON) from the first four.
  const built = await eigenlorax(['build', ...adapters.slice(0, 4), '-o', out, '--components', '6', '--seed', '5', '--json']);
  t.is(built.code, 0, built.stderr);
  t.is(built.stderr, '', 'no progress bar when stderr is not a terminal');
  const summary = JSON.parse(built.stdout);
  const subspace = await loadSubspace(out);
  t.is(summary.subspace.id, subspace.id);
  t.is(summary.adapters, 4);
  t.is(summary.modules, 2);
  t.deepEqual(summary.components.A, [{ value: 6, count: 2 }]);
  t.is(subspace.settings.seed, 5);
  t.deepEqual(subspace.settings.components, { A: 6, B: 6 });
  t.true(summary.inSampleError > 0 && summary.inSampleError < 0.1, `seed ${seed}: ${summary.inSampleError}`);
  t.true(summary.savings.trainable.ratio > 1);
  for (const key of ['totalMs', 'readMs', 'nativeMs', 'hashMs']) t.true(summary.timings[key] >= 0, key);
  t.deepEqual((await readdir(path.join(out, 'coefficients'))).sort(), ['task-0.safetensors', 'task-1.safetensors', 'task-2.safetensors', 'task-3.safetensors']);
  for (const c of summary.coefficients) {
    const loaded = await loadCoefficients(c.file, subspace);
    t.is(loaded.adapter.name, c.adapter);
    t.true(Math.abs(loaded.relativeError - c.relativeError) < 1e-9);
    t.is(loaded.modules.size, 2);
  }
  // Each source was hashed for the record.
  t.true(subspace.sources.every((s) => s.files.every((f) => typeof f.sha256 === 'string' && f.sha256.length === 64)));

  // build (text) with --variance: the summary in words.
  const text = await eigenlorax(['build', ...adapters.slice(0, 4), '-o', path.join(dir, 'by-variance'), '--variance', '0.9']);
  t.is(text.code, 0, text.stderr);
  for (const pattern of [/^built a subspace of 4 adapters -> /, /K_A +\d+ \(/, /explained A +mean /, /in-sample error +0\.\d{3}/, /storage +4 adapters as LoRA/, /new task +rank 4:/, /time +/, /task-3\.safetensors/]) {
    t.regex(text.stdout, pattern);
  }
  t.is((await loadSubspace(path.join(dir, 'by-variance'))).settings.variance, 0.9);

  // project the fifth (new) adapter and one of the four, JSON.
  const proj = path.join(dir, 'projected');
  const projected = await eigenlorax(['project', out, adapters[4]!, adapters[0]!, '-o', proj, '--json']);
  t.is(projected.code, 0, projected.stderr);
  const p = JSON.parse(projected.stdout);
  t.is(p.subspace, subspace.id);
  t.deepEqual(
    p.adapters.map((a: { adapter: string }) => a.adapter),
    ['task-4', 'task-0'],
  );
  const direct = await projectAdapter(subspace, adapters[4]!);
  const newOne = await loadCoefficients(path.join(proj, 'task-4.safetensors'), subspace);
  t.true(Math.abs(newOne.relativeError - direct.relativeError) < 1e-6);
  t.true(Math.abs(p.adapters[0].relativeError - direct.relativeError) < 1e-6);
  t.true(direct.relativeError < 0.2, `seed ${seed}: a new adapter from the same planted subspace: ${direct.relativeError}`);

  // project, text.
  const projectedText = await eigenlorax(['project', out, adapters[4]!, '-o', path.join(dir, 'projected-text')]);
  t.is(projectedText.code, 0, projectedText.stderr);
  t.regex(projectedText.stdout, /^projected 1 of 1 adapter on subspace [0-9a-f]{12} -> /);
  t.regex(projectedText.stdout, /task-4 +2 +0\.\d{3} +0\.\d{3} +task-4\.safetensors/);

  // export as PEFT and kohya: loadable adapters with the adapter's shapes.
  const peftOut = path.join(dir, 'exported-peft');
  const exported = await eigenlorax(['export', out, path.join(proj, 'task-4.safetensors'), '-o', peftOut, '--format', 'peft', '--json']);
  t.is(exported.code, 0, exported.stderr);
  const e = JSON.parse(exported.stdout);
  t.is(e.format, 'peft');
  t.is(e.modules, 2);
  const peft = await loadAdapter(peftOut);
  t.deepEqual([...peft.modules.keys()].sort(), [...MODULES].sort());
  for (const m of peft.modules.values()) {
    t.is(m.rank, RANK);
    t.is(m.inFeatures, D);
    t.is(m.outFeatures, D);
  }
  const kohyaOut = path.join(dir, 'exported-kohya');
  const kohya = await eigenlorax(['export', out, path.join(proj, 'task-4.safetensors'), '-o', kohyaOut, '--format', 'kohya', '--dtype', 'bf16']);
  t.is(kohya.code, 0, kohya.stderr);
  t.regex(kohya.stdout, /^exported task-4 \(2 modules, relative dW error 0\.\d{3}\) as kohya/);
  const kohyaFile = path.join(kohyaOut, 'task-4.safetensors');
  t.true(existsSync(kohyaFile));
  const k = await loadAdapter(kohyaFile);
  t.is(k.format, 'kohya');
  t.is(k.modules.size, 2);
  t.true([...k.modules.values()].every((m) => m.dtypes.A === 'BF16' && m.rank === RANK));
});

test('analyze: text with a verdict, --json with inSampleError / heldOutError, --svg written', async (t) => {
  const dir = await tempDir(t);
  const seed = freshSeed();
  const adapters = await writeAdapters(dir, 4, seed);
  const svg = path.join(dir, 'chart.svg');
  const r = await eigenlorax(['analyze', ...adapters, '--components', '6', '--json', '--svg', svg]);
  t.is(r.code, 0, r.stderr);
  t.is(r.stderr, '');
  const a = JSON.parse(r.stdout);
  t.is(a.shared, 'yes', `seed ${seed}: ${a.verdict}`);
  t.true(a.inSampleError < 0.1 && a.heldOutError < 0.1, `seed ${seed}: ${a.inSampleError} ${a.heldOutError}`);
  t.deepEqual(a.adapters, ['task-0', 'task-1', 'task-2', 'task-3']);
  t.is(a.modules.length, 2);
  t.is(a.svg, svg);
  const chart = await readFile(svg, 'utf8');
  t.regex(chart, /^<\?xml version="1\.0" encoding="UTF-8"\?>\n<svg [^>]*viewBox="0 0 720 440"/);
  t.true(chart.trimEnd().endsWith('</svg>'));
  t.deepEqual(await readdir(dir).then((names) => names.filter((n) => n.endsWith('.tmp'))), []);

  const text = await eigenlorax(['analyze', ...adapters, '--components', '6', '--stacking', 'raw']);
  t.is(text.code, 0, text.stderr);
  for (const pattern of [
    /^analyzed 4 adapters, 2 modules: raw, K=6/,
    /module +ranks +K +expl\. A +expl\. B +K90 A +K90 B +overlap A \(random\) +overlap B \(random\) +in-sample +held-out/,
    /attn1\.to_q +4x4 +6 +[01]\.\d{3} +[01]\.\d{3}/,
    /in-sample error +0\.\d{3}/,
    /held-out error +0\.\d{3}/,
    /overlap +A 0\.\d{3} \(random 0\.\d{3}\)/,
    /verdict +These adapters share a subspace/,
    /advice +/,
  ]) {
    t.regex(text.stdout, pattern);
  }
});

test('bad arguments exit 2 with the usage; library errors exit 1 with the message and the code', async (t) => {
  const dir = await tempDir(t);
  const adapters = await writeAdapters(dir, 2, freshSeed());
  const out = path.join(dir, 'out');
  usageExit(t, await eigenlorax(['build', ...adapters]), /build needs -o <dir>/, 'build without -o');
  usageExit(t, await eigenlorax(['build', '-o', out]), /at least one adapter/, 'build without adapters');
  usageExit(t, await eigenlorax(['build', ...adapters, '-o', out, '--components', '0']), /--components expects an integer >= 1/, '--components 0');
  usageExit(t, await eigenlorax(['build', ...adapters, '-o', out, '--components', '4', '--variance', '0.9']), /not both/, 'K and variance');
  usageExit(t, await eigenlorax(['build', ...adapters, '-o', out, '--variance', '1.5']), /fraction in \(0, 1\]/, '--variance 1.5');
  usageExit(t, await eigenlorax(['build', ...adapters, '-o', out, '--stacking', 'cooked']), /--stacking must be one of canonical, raw/, 'stacking');
  usageExit(t, await eigenlorax(['build', ...adapters, '-o', out, '--stacking', 'raw', '--weighting', 'equal']), /canonical only/, 'raw + weighting');
  usageExit(t, await eigenlorax(['analyze', adapters[0]!]), /at least two adapter/, 'analyze one adapter');
  usageExit(t, await eigenlorax(['project', out]), /a subspace and at least one adapter/, 'project without adapters');
  usageExit(t, await eigenlorax(['export', out, 'x.safetensors', '-o', out, '--format', 'onnx']), /--format must be one of/, 'export --format');
  const unknown = await eigenlorax(['analyze', ...adapters, '--frobnicate']);
  t.is(unknown.code, 2);
  t.regex(unknown.stderr, /frobnicate/);
  t.false(existsSync(out), 'nothing written on a usage error');

  // Library errors.
  const missing = await eigenlorax(['build', path.join(dir, 'no-such-adapter'), '-o', out]);
  t.is(missing.code, 1);
  t.regex(missing.stderr, /no-such-adapter.*\(ERR_NOT_FOUND\)/);
  t.false(existsSync(out));
  const missingJson = await eigenlorax(['analyze', adapters[0]!, path.join(dir, 'no-such-adapter'), '--json']);
  t.is(missingJson.code, 1);
  t.is(JSON.parse(missingJson.stdout).error.code, 'ERR_NOT_FOUND');

  t.is((await eigenlorax(['build', ...adapters, '-o', out, '-k', '4'])).code, 0);
  const notCoefficients = await eigenlorax(['export', out, path.join(adapters[0]!, 'adapter_model.safetensors'), '-o', path.join(dir, 'e')]);
  t.is(notCoefficients.code, 1);
  t.regex(notCoefficients.stderr, /not an eigenlorax coefficients file \(ERR_SUBSPACE_FORMAT\)/);
  t.false(existsSync(path.join(dir, 'e')));
  const kohyaFromBuild = await eigenlorax(['export', out, path.join(out, 'coefficients', 'task-0.safetensors'), '-o', path.join(dir, 'k'), '--format', 'kohya', '--json']);
  t.is(kohyaFromBuild.code, 0, kohyaFromBuild.stderr);
  await writeFile(path.join(out, 'subspace.json'), '{"format": "eigenlorax-subspace", "formatVersion": 99}');
  const corrupt = await eigenlorax(['project', out, adapters[0]!, '-o', path.join(dir, 'p')]);
  t.is(corrupt.code, 1);
  t.regex(corrupt.stderr, /subspace\.json.*\(ERR_SUBSPACE_FORMAT\)/);
});
