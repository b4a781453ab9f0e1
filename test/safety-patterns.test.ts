/**
 * Issue 13, defect 2: rank_pattern / alpha_pattern keys from a hostile config. Keys run on
 * a linear-time engine (RE2) with bounded count and length; the results are PEFT's
 * (`re.match(rf"(.*\.)?({key})$", name)`), checked against JavaScript's backtracking
 * engine on keys where both engines are safe.
 */
import test from 'ava';
import fc from 'fast-check';
import path from 'node:path';
import { EigenLoraxError, inspectAdapter, loadAdapter } from '../lib/index.js';
import { compilePatterns, matchPattern, MAX_PATTERN_KEYS, MAX_REGEX_KEYS } from '../lib/adapters/patterns.js';
import { basePeftConfig, peftTensors, tempDir, writePeft } from './helpers/adapter-fixtures.js';

const spec = (name: string, rank: number) => ({ name, rank, in: 8, out: 8 });

test('a catastrophic-backtracking key, (.*)*(.*)*(.*)*x, is matched in linear time with PEFT\'s result', async (t) => {
  const dir = await tempDir(t);
  // A long module name that does not end in x makes a backtracking engine try every split.
  const long = `model.${'a.'.repeat(40)}layers.0.q_proj`;
  await writePeft(dir, peftTensors([spec('model.layers.0.x', 2), spec(long, 4)]), {
    ...basePeftConfig(),
    r: 4,
    lora_alpha: 8,
    rank_pattern: { '(.*)*(.*)*(.*)*x': 2 },
    alpha_pattern: { '(.*)*(.*)*(.*)*x': 32 },
  });
  const started = performance.now();
  const adapter = await loadAdapter(dir);
  const info = await inspectAdapter(dir);
  const ms = performance.now() - started;
  t.true(ms < 5000, `took ${ms} ms`);
  const byName = adapter.modules;
  t.deepEqual([byName.get('model.layers.0.x')?.rank, byName.get('model.layers.0.x')?.alpha], [2, 32]);
  t.deepEqual([byName.get(long)?.rank, byName.get(long)?.alpha], [4, 8]);
  t.truthy(info);
  // And on the matcher alone, a 20,000-character name.
  const compiled = compilePatterns({ '(.*)*(.*)*(.*)*x': 1 }, 'f', 'rank_pattern');
  const t0 = performance.now();
  t.is(matchPattern(compiled, `${'a.'.repeat(10_000)}y`), undefined);
  t.is(matchPattern(compiled, `${'a.'.repeat(10_000)}x`)?.value, 1);
  t.true(performance.now() - t0 < 2000);
});

test('100,000 pattern keys are refused (ERR_ADAPTER_CONFIG naming the field) without a long wait', async (t) => {
  const dir = await tempDir(t);
  const rankPattern: Record<string, number> = {};
  for (let i = 0; i < 100_000; i++) rankPattern[`layers.${i}.q_proj`] = 2;
  await writePeft(dir, peftTensors([spec('model.layers.0.q_proj', 4)]), { ...basePeftConfig(), r: 4, rank_pattern: rankPattern });
  const started = performance.now();
  const error = await t.throwsAsync(() => loadAdapter(dir), { instanceOf: EigenLoraxError });
  t.is(error?.code, 'ERR_ADAPTER_CONFIG');
  t.true(error?.message.includes('rank_pattern'), error?.message);
  t.true(error?.message.includes(String(MAX_PATTERN_KEYS)), error?.message);
  t.true(performance.now() - started < 5000);
});

test('the largest accepted pattern (10,000 plain keys) matches 1,000 modules quickly', (t) => {
  const keys: Record<string, number> = {};
  for (let i = 0; i < MAX_PATTERN_KEYS; i++) keys[`model.layers.${i}.self_attn.q_proj`] = i;
  const compiled = compilePatterns(keys, 'f', 'rank_pattern');
  const started = performance.now();
  for (let i = 0; i < 1000; i++) t.is(matchPattern(compiled, `model.layers.${i}.self_attn.q_proj`)?.value, i);
  t.true(performance.now() - started < 3000, `${performance.now() - started} ms`);
});

test('too many regex keys, too long keys and keys RE2 cannot run are refused naming the field', (t) => {
  const many: Record<string, number> = {};
  for (let i = 0; i <= MAX_REGEX_KEYS; i++) many[`layers\\.${i}\\d+`] = 1;
  const e1 = t.throws(() => compilePatterns(many, 'cfg.json', 'alpha_pattern'), { instanceOf: EigenLoraxError });
  t.is(e1?.code, 'ERR_ADAPTER_CONFIG');
  t.true(e1?.message.includes('alpha_pattern'));
  const e2 = t.throws(() => compilePatterns({ ['a'.repeat(1001)]: 1 }, 'cfg.json', 'rank_pattern'), { instanceOf: EigenLoraxError });
  t.is(e2?.code, 'ERR_ADAPTER_CONFIG');
  t.true(e2?.message.includes('1001'));
  for (const key of ['(a)\\1', '(?=q)q', 'q(']) {
    const e = t.throws(() => compilePatterns({ [key]: 1 }, 'cfg.json', 'rank_pattern'), { instanceOf: EigenLoraxError });
    t.is(e?.code, 'ERR_ADAPTER_CONFIG', key);
    t.true(e?.message.includes(JSON.stringify(`rank_pattern.${key}`)), e?.message);
  }
});

test('plain and RE2 matching agree with a backtracking reference on random keys and names', (t) => {
  const component = fc.constantFrom('model', 'layers', '0', '1', '10', 'q_proj', 'v-proj', 'attn', 'x');
  const name = fc.array(component, { minLength: 1, maxLength: 6 }).map((c) => c.join('.'));
  const keyPart = fc.constantFrom('layers', '0', '1', 'q_proj', 'v-proj', 'attn', '.', '\\.', '\\d+', '.*', '[0-9]', '(q|v)', 'x');
  const key = fc.tuple(fc.boolean(), fc.array(keyPart, { minLength: 1, maxLength: 5 })).map(([anchor, p]) => (anchor ? '^' : '') + p.join(''));
  fc.assert(
    fc.property(fc.array(key, { minLength: 1, maxLength: 4 }), name, (keys, moduleName) => {
      const patterns = Object.fromEntries(keys.map((k, i) => [k, i]));
      const expected = Object.keys(patterns).find((k) => new RegExp(`^(?:.*\\.)?(?:${k})$`).test(moduleName));
      t.is(matchPattern(compilePatterns(patterns, 'f', 'rank_pattern'), moduleName)?.key, expected, `${JSON.stringify(keys)} ${moduleName}`);
    }),
    { seed: 13, numRuns: 2000 },
  );
});

test('inspect of a folder with a hostile key answers with the config path in errors, never hangs', async (t) => {
  const dir = await tempDir(t);
  await writePeft(dir, peftTensors([spec('model.layers.0.q_proj', 4)]), { ...basePeftConfig(), r: 4, rank_pattern: { '(a+)+\\1': 2 } });
  const error = await t.throwsAsync(() => inspectAdapter(dir), { instanceOf: EigenLoraxError });
  t.is(error?.code, 'ERR_ADAPTER_CONFIG');
  t.true(error?.message.includes(path.join(dir, 'adapter_config.json')), error?.message);
});
