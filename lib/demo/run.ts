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
import type { Dataset } from '../data/dataset.js';
import { fashionMnistCacheDir, loadFashionMnist, type FashionMnist } from '../data/fashion-mnist.js';
import { transformDataset } from '../data/transforms.js';
import { EigenLoraxError } from '../errors.js';
import { exists, writeFileAtomic } from '../io/files.js';
import type { Matrix } from '../matrix.js';
import { ProgressBar } from '../progress.js';
import { getThreads } from '../runtime.js';
import { writeServeFolder } from '../serve/folder.js';
import { buildSubspace } from '../subspace/build.js';
import { reconstructAdapter } from '../subspace/project.js';
import type { AdapterCoefficients, Subspace } from '../subspace/types.js';
import { adaptModel, loraModel } from '../train/adapt.js';
import { saveModelAdapter } from '../train/export.js';
import { GELU, Linear, LoRA, ReLU, type Layer } from '../train/layers.js';
import { trainModel } from '../train/loop.js';
import { Sequential } from '../train/model.js';
import { argumentPlace, Count, FunctionOption, InstanceOf, Options, parse, Type, type SameOptionNames } from '../schema.js';
import { invalid, object } from '../validate.js';
import { version } from '../version.js';
import { FULL_SETTINGS, QUICK_SETTINGS, type DemoSettings, type DemoTask, type HeldOutTask } from './settings.js';
import { writeDemoFiles } from './report.js';
import { evaluateTargets } from './targets.js';
import { seconds, secondsText, takeRows, TestSets, windowStarts, type Run } from './context.js';
import { trainHeldOut } from './heldout.js';
import type { DemoOptions, ZooTaskResult, ZeroShotResult, DemoResults } from './types.js';

/** Bump when the cached files' meaning changes. */
export const DEMO_CACHE_VERSION = 1;
/** The results folder when none is given. */
export const DEFAULT_DEMO_OUT = 'eigenlorax-demo';

export type { DemoOptions, MethodId, CurvePoint, MethodResult, HeldOutResult, ZooTaskResult, ZeroShotResult, TargetResult, DemoResults } from './types.js';

const DEMO_BASE_MODEL = 'eigenlorax-demo-mlp';

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

const Folder = Type.String({ minLength: 1, description: 'a folder path' });
const DemoOptionsSchema = Options({
  out: Type.Optional(Folder),
  cacheDir: Type.Optional(Folder),
  seed: Type.Optional(Count(0, 2 ** 24)),
  quick: Type.Optional(Type.Boolean()),
  // Checked by checkSettings.
  settings: Type.Optional(Type.Unknown()),
  packageDir: Type.Optional(Folder),
  onLog: Type.Optional(FunctionOption),
  progress: Type.Optional(InstanceOf(ProgressBar, 'a ProgressBar')),
  signal: Type.Optional(InstanceOf(AbortSignal, 'an AbortSignal')),
});
const demoOptionNames: SameOptionNames<typeof DemoOptionsSchema, DemoOptions> = true;
void demoOptionNames;

/** The options checked, with the defaults filled in. */
function checkOptions(options: DemoOptions): Run {
  const o = parse(DemoOptionsSchema, options, argumentPlace('options'));
  const progress = (o.progress as ProgressBar | undefined) ?? false;
  const seed = o.seed ?? 0;
  const quick = o.quick === true;
  const settings = checkSettings((o.settings as DemoSettings | undefined) ?? (quick ? QUICK_SETTINGS : FULL_SETTINGS));
  const out = path.resolve(o.out ?? DEFAULT_DEMO_OUT);
  const cacheDir = fashionMnistCacheDir(o.cacheDir === undefined ? {} : { cacheDir: o.cacheDir });
  const log = (o.onLog as ((line: string) => void) | undefined) ?? (() => undefined);
  const signal = (o.signal as AbortSignal | undefined) ?? null;
  return {
    settings,
    seed,
    quick,
    out,
    cacheDir,
    demoCache: path.join(cacheDir, 'demo'),
    packageDir: o.packageDir,
    log,
    signal,
    progress,
    checkAbort: () => signal?.throwIfAborted(),
  };
}

const accuracyOf = async (model: Sequential, d: Dataset) => (await model.evaluate(d)).accuracy ?? 0;

/** 1. Fashion-MNIST, from the cache or the package. */
async function loadData(run: Run): Promise<{ data: FashionMnist; dataSeconds: number }> {
  const { settings, cacheDir, seed, log } = run;
  const t = performance.now();
  const data = await loadFashionMnist({
    cacheDir,
    testSize: settings.testSize,
    seed,
    ...(run.packageDir === undefined ? {} : { packageDir: run.packageDir }),
  });
  const dataSeconds = seconds(t);
  log(`data: Fashion-MNIST, ${data.train.inputs.rows} training and ${data.test.inputs.rows} test images (${data.cache.built ? 'cache built' : 'from cache'}, ${dataSeconds.toFixed(1)} s)`);
  run.checkAbort();
  return { data, dataSeconds };
}

interface BaseStep {
  base: Sequential;
  baseKey: string;
  baseFile: string;
  baseCached: boolean;
  baseTrainSeconds: number;
  baseAccuracy: number;
  baseSeconds: number;
}

/** 2. The base model: loaded from the cache, or trained on the upright images and cached; then frozen. */
async function prepareBase(run: Run, data: FashionMnist): Promise<BaseStep> {
  const { settings, seed, demoCache, log, signal, progress } = run;
  const t = performance.now();
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
    const r = await trainModel(base, { train: takeRows(data.train, 0, settings.base.trainSize) }, {
      epochs: settings.base.epochs,
      batchSize: settings.base.batchSize,
      optimizer: { type: 'adamw', lr: settings.base.lr, weightDecay: 0 },
      schedule: { type: 'cosine', warmupSteps: 20 },
      seed,
      progress,
      ...(signal === null ? {} : { signal }),
    });
    run.checkAbort();
    baseTrainSeconds = r.seconds;
    await base.save(baseFile, { metadata: { 'eigenlorax.demo': JSON.stringify({ settings: settings.base, seed }) } });
    await writeFileAtomic(baseMeta, `${JSON.stringify({ trainSeconds: r.seconds, seed, settings: settings.base }, null, 2)}\n`);
  }
  freeze(base);
  const baseEval = await base.evaluate(data.test);
  const baseSeconds = seconds(t);
  log(`base: accuracy ${(100 * (baseEval.accuracy ?? 0)).toFixed(2)}% on the upright test images (${baseCached ? 'loaded from the cache' : `trained in ${secondsText(baseTrainSeconds)}`})`);
  run.checkAbort();
  return { base, baseKey, baseFile, baseCached, baseTrainSeconds, baseAccuracy: baseEval.accuracy ?? 0, baseSeconds };
}

/** 3. The zoo: one LoRA per zoo task, loaded from the cache or trained and saved as a PEFT folder. */
async function trainZoo(
  run: Run,
  pool: Dataset,
  { base, baseKey }: BaseStep,
  testSets: TestSets,
): Promise<{ zoo: ZooTaskResult[]; zooAdapters: LoraAdapter[]; zooTrained: number; zooSeconds: number }> {
  const { seed, log, signal, progress, checkAbort } = run;
  const t = performance.now();
  const z = run.settings.zoo;
  const zooKey = hashOf({ v: DEMO_CACHE_VERSION, kind: 'zoo', base: baseKey, seed, rank: z.rank, epochs: z.epochs, trainSize: z.trainSize, batchSize: z.batchSize, lr: z.lr });
  const zooDir = path.join(run.demoCache, `zoo-${zooKey}`);
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
    const own = await testSets.of(task, z.evalSize);
    const accuracy = await accuracyOf(modelFromAdapter(base, adapter), own);
    const baseAccuracy = await accuracyOf(base, own);
    zoo.push({ name: task.name, transform: task.transform, accuracy, baseAccuracy, trainSeconds, cached, adapter: folder });
    log(
      `zoo ${String(i + 1).padStart(2)}/${z.tasks.length} ${task.name.padEnd(10)} LoRA r=${z.rank} accuracy ${(100 * accuracy).toFixed(2)}% ` +
        `(base ${(100 * baseAccuracy).toFixed(2)}%)${cached ? ', from the cache' : `, trained in ${secondsText(trainSeconds)}`}`,
    );
  }
  const zooSeconds = seconds(t);
  return { zoo, zooAdapters, zooTrained, zooSeconds };
}

/** 4. The subspace of the zoo. */
async function buildZooSubspace(run: Run, zooAdapters: readonly LoraAdapter[]): Promise<{ subspace: Subspace; subspaceModules: DemoResults['subspace']['modules']; subspaceSeconds: number }> {
  const { settings, seed, log } = run;
  const z = settings.zoo;
  const t = performance.now();
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
  run.checkAbort();
  return { subspace, subspaceModules, subspaceSeconds };
}

/** 4b. Zero-shot: the zoo adapters rebuilt from their coefficients, on their own tasks. */
async function zeroShotZoo(
  run: Run,
  base: Sequential,
  subspace: Subspace,
  zoo: readonly ZooTaskResult[],
  zooAdapters: readonly LoraAdapter[],
  testSets: TestSets,
): Promise<{ zeroShot: ZeroShotResult[]; zeroShotSeconds: number }> {
  const { checkAbort, log } = run;
  const z = run.settings.zoo;
  const t = performance.now();
  const zeroShot: ZeroShotResult[] = [];
  for (const [i, task] of z.tasks.entries()) {
    checkAbort();
    const coefficients = subspace.coefficients[i];
    if (coefficients === undefined) throw new EigenLoraxError(`the subspace has no coefficients for zoo adapter ${task.name}`, 'ERR_INTERNAL');
    const rebuilt = await reconstructAdapter(subspace, coefficients);
    const own = await testSets.of(task, z.evalSize);
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
  return { zeroShot, zeroShotSeconds };
}

/**
 * Runs the experiment and writes the results folder. Resolves with everything it reports
 * (also in `<out>/results.json`).
 */
export async function runDemo(options: DemoOptions = {}): Promise<DemoResults> {
  const run = checkOptions(options);
  const { settings, seed, out, cacheDir, log } = run;
  const z = settings.zoo;
  const started = performance.now();
  const { data, dataSeconds } = await loadData(run);
  const pool = data.train;
  const test = data.test;
  const baseStep = await prepareBase(run, data);
  const { base } = baseStep;
  const testSets = new TestSets(test);
  const { zoo, zooAdapters, zooTrained, zooSeconds } = await trainZoo(run, pool, baseStep, testSets);
  const { subspace, subspaceModules, subspaceSeconds } = await buildZooSubspace(run, zooAdapters);
  const { zeroShot, zeroShotSeconds } = await zeroShotZoo(run, base, subspace, zoo, zooAdapters, testSets);
  // The zoo's test sets are not needed any more.
  testSets.clear();
  const { heldOut, heldOutSeconds } = await trainHeldOut(run, pool, base, subspace, testSets);

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
    quick: run.quick,
    settings,
    machine: { cpus: os.availableParallelism(), threads: getThreads(), node: process.version, platform: `${os.type()} ${os.arch()}` },
    cache: { dir: cacheDir, base: baseStep.baseCached ? 'loaded' : 'trained', zooTrained, zooLoaded: z.tasks.length - zooTrained },
    data: { train: pool.inputs.rows, test: test.inputs.rows, cacheFile: data.cache.file },
    timings: { totalSeconds: 0, dataSeconds, baseSeconds: baseStep.baseSeconds, zooSeconds, subspaceSeconds, heldOutSeconds, zeroShotSeconds },
    base: {
      layers: [784, ...settings.hidden, 10],
      activation: settings.activation,
      parameters: base.parameterCount(),
      accuracy: baseStep.baseAccuracy,
      trainSeconds: baseStep.baseTrainSeconds,
      cached: baseStep.baseCached,
      file: baseStep.baseFile,
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

export { evaluateTargets };
export type { DemoSettings, DemoTask, HeldOutTask };
