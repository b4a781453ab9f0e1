/**
 * Training throughput of the demo's model: a 784-256-256-10 ReLU MLP at batch 128.
 *
 *   npm run bench:train
 *   node dist/bench/train.js [--rounds 21] [--steps 25] [--batch 128] [--k 16] [--augment 64] [--rank 8] [--threads N] [--json PATH] [--python PATH] [--no-peer]
 *   node dist/bench/train.js --help      the flags
 *
 * Contenders, each trained by `trainModel` (AdamW with lr 1e-4, see LR; softmax
 * cross-entropy) on the same synthetic batches (inputs uniform in [0, 1], random labels),
 * every run from the same initial parameters:
 *   - base:       every Linear layer trainable (full training, 269,322 parameters);
 *   - LoRA:       r = 8 on the three frozen Linear layers (PEFT initialisation);
 *   - EigenLoRA:  K = 16 components per side (random orthonormal), r = 8, only alpha and beta;
 *   - EigenLoRAx: the same with P = 64 augmented directions per side.
 *
 * Rounds are interleaved: each round runs every contender for `--steps` updates, in an
 * order that rotates from round to round. Plain rounds give samples/s (the training loop's
 * own count: samples over the loop's wall time, setup excluded); the median over rounds is
 * reported, and "step vs LoRA" is the median over rounds of the ratio to LoRA's step time
 * in the same round (paired, so slow phases of a shared machine cancel out). Instrumented rounds, interleaved with the plain ones, wrap the native entry
 * points (the whole-step trainModelStep, the whole-model trainModelForward/Backward, and the
 * per-layer linearForward/Backward, loraForward/Backward, eigenLoraForward/Backward that
 * models the fused jobs cannot run use) and the loss and optimiser with timers, to split a
 * step into:
 *   - native: wall time from each native call to its promise's resolution (the kernel plus
 *     the hand-off to and from the compute thread);
 *   - ReLU, loss and optimiser: the ReLU layers (0 when fused into the layer jobs), AdamW (one synchronous native call,
 *     lib/train/kernels.ts) and the softmax cross-entropy (0 when inside the whole-step job);
 *   - other: the rest (batch gathering, finiteness checks, events, awaits, argument checks).
 * "Outside kernels" is step time minus native time, plus the hand-off latency of the native
 * calls (estimated separately, see handOffUs): it counts the hand-off as overhead, not as
 * kernel time.
 *
 * Peer: PyTorch (bench/peers/train_torch.py, under --python, default /usr/bin/python3 where
 * Debian's python3-torch lands) trains the same models (same widths, batch, AdamW, loss,
 * adapters; its own initial values and synthetic data of the same kind) with the same
 * thread count, OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed for its process alone. Each
 * round runs the peer's contender right after ours, and "vs PyTorch" is the median over
 * rounds of the paired ratio of samples/s. Without torch the run says so and goes on.
 *
 * Writes the numbers as JSON to --json (default: <os.tmpdir()>/eigenlorax-bench/train.json).
 * Prints tables; never passes or fails on time.
 */
import { spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import os from 'node:os';
import path from 'node:path';
import { Option } from 'commander';
import { getThreads, linearForward, matrix, orthonormalize, setThreads, type Matrix } from '../lib/index.js';
import {
  crossEntropyLoss,
  createOptimizer,
  eigenLoraModel,
  Linear,
  loraModel,
  augmentComponents,
  ReLU,
  Sequential,
  trainModel,
  type Loss,
  type ModuleComponents,
} from '../lib/train/index.js';
import { type Dataset } from '../lib/data/index.js';
import { native } from '../lib/native.js';
import { benchCommand, cpuSnapshot, fillGaussian, integerArg, machineLines, median, otherLoadLine, sig, table, type Cell } from './common.js';
import { mulberry32 } from '../lib/random.js';

interface Options {
  rounds: number;
  steps: number;
  batch: number;
  k: number;
  augment: number;
  rank: number;
  threads: number;
  json: string;
  python: string;
  peer: boolean;
}

function parseOptions(argv: string[]): Options {
  return benchCommand('train.js', "training throughput of the demo's 784-256-256-10 MLP: full training, LoRA, EigenLoRA, EigenLoRAx (and a PyTorch peer)")
    .addOption(new Option('--rounds <n>', 'plain rounds (and as many instrumented ones); medians over rounds').default(21).argParser(integerArg()))
    .addOption(new Option('--steps <n>', 'updates per contender per round').default(25).argParser(integerArg()))
    .addOption(new Option('--batch <n>', 'batch size').default(128).argParser(integerArg()))
    .addOption(new Option('--k <n>', 'components K per side of EigenLoRA and EigenLoRAx').default(16).argParser(integerArg()))
    .addOption(new Option('--augment <n>', "EigenLoRAx's augmented directions P per side").default(64).argParser(integerArg(0)))
    .addOption(new Option('--rank <n>', 'rank r of LoRA, EigenLoRA and EigenLoRAx').default(8).argParser(integerArg()))
    .addOption(new Option('--threads <n>', 'kernel threads (setThreads); 0: the library default, all cores').default(0).argParser(integerArg(0)))
    .addOption(
      new Option('--json <path>', 'where to write the numbers as JSON')
        .default(path.join(os.tmpdir(), 'eigenlorax-bench', 'train.json'))
        .argParser((text) => path.resolve(text)),
    )
    .addOption(new Option('--python <path>', 'interpreter for the PyTorch peer').default('/usr/bin/python3'))
    .option('--no-peer', 'skip the PyTorch peer')
    .parse(argv, { from: 'user' })
    .opts<Options>();
}

const WIDTHS = [784, 256, 256, 10];

function baseModel(trainable: boolean): Sequential {
  const layers = [];
  for (let i = 0; i + 1 < WIDTHS.length; i++) {
    if (i > 0) layers.push(new ReLU());
    layers.push(Linear.create(`fc${i + 1}`, WIDTHS[i] as number, WIDTHS[i + 1] as number, { seed: i + 1, trainable }));
  }
  return new Sequential(layers);
}

async function randomOrthonormal(rows: number, cols: number, seed: number): Promise<Matrix> {
  const m = matrix(rows, cols);
  fillGaussian(m.data, seed);
  return orthonormalize(m);
}

function syntheticData(rows: number, seed: number): Dataset {
  const u = mulberry32(seed);
  const inputs = matrix(rows, WIDTHS[0] as number);
  for (let i = 0; i < inputs.data.length; i++) inputs.data[i] = u();
  const targets = new Uint8Array(rows);
  for (let i = 0; i < rows; i++) targets[i] = Math.floor(u() * 10);
  return { inputs, targets, classes: 10 };
}

/** First and third quartiles (linear interpolation). */
function quartiles(values: number[]): [number, number] {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => {
    const x = q * (sorted.length - 1);
    const lo = Math.floor(x);
    const hi = Math.min(sorted.length - 1, lo + 1);
    return (sorted[lo] as number) + ((sorted[hi] as number) - (sorted[lo] as number)) * (x - lo);
  };
  return sorted.length === 0 ? [Number.NaN, Number.NaN] : [at(0.25), at(0.75)];
}

// ---- instrumentation

const NATIVE_CALLS = [
  'trainModelStep',
  'trainModelForward',
  'trainModelBackward',
  'linearForward',
  'linearBackward',
  'loraForward',
  'loraBackward',
  'eigenLoraForward',
  'eigenLoraBackward',
] as const;

interface Clock {
  on: boolean;
  nativeMs: number;
  nativeCalls: number;
  activationMs: number;
  lossMs: number;
  optimizerMs: number;
}

const clock: Clock = { on: false, nativeMs: 0, nativeCalls: 0, activationMs: 0, lossMs: 0, optimizerMs: 0 };

/** Times ReLU forward and backward (the ReLU layer, with its argument checks and the native call). */
function instrumentActivations(): void {
  const proto = ReLU.prototype as unknown as Record<'forward' | 'backward', (...args: unknown[]) => Promise<unknown>>;
  for (const method of ['forward', 'backward'] as const) {
    const original = proto[method];
    proto[method] = function (this: ReLU, ...args: unknown[]) {
      if (!clock.on) return original.apply(this, args);
      const start = performance.now();
      return original.apply(this, args).finally(() => {
        clock.activationMs += performance.now() - start;
      });
    };
  }
}

function instrumentNative(): void {
  const table = native as unknown as Record<string, (args: unknown) => Promise<unknown>>;
  for (const name of NATIVE_CALLS) {
    const original = table[name] as (args: unknown) => Promise<unknown>;
    table[name] = (args: unknown) => {
      if (!clock.on) return original.call(native, args);
      const start = performance.now();
      return original.call(native, args).finally(() => {
        clock.nativeMs += performance.now() - start;
        clock.nativeCalls++;
      });
    };
  }
}

/** Times the loss where it runs in JavaScript's turn (models the whole-step job cannot run; inside that job it counts as native). */
function instrumentLoss(): void {
  const compute = crossEntropyLoss.compute.bind(crossEntropyLoss);
  // An own property on the built-in object: the training loop still recognises the loss as built-in.
  crossEntropyLoss.compute = (...args: Parameters<Loss['compute']>) => {
    if (!clock.on) return compute(...args);
    const start = performance.now();
    try {
      return compute(...args);
    } finally {
      clock.lossMs += performance.now() - start;
    }
  };
}

function timedAdamW(lr: number) {
  const optimizer = createOptimizer({ type: 'adamw', lr, weightDecay: 0 });
  const step = optimizer.step.bind(optimizer);
  optimizer.step = (params) => {
    if (!clock.on) return step(params);
    const start = performance.now();
    try {
      step(params);
    } finally {
      clock.optimizerMs += performance.now() - start;
    }
  };
  return optimizer;
}

/**
 * Hand-off latency of a queued native call (JS thread -> compute thread -> back to the JS
 * thread, native/addon/dispatch.h), microseconds. Calls under about 2e5 multiply-adds run
 * inline on the JS thread (native/addon/job.h), so this times linear layers of 64, 128 and
 * 256 rows through a 64 x 64 weight (262k-1M multiply-adds, all queued, arguments of 16-64
 * KiB so that copies hardly count) and takes the intercept of the line through them.
 */
async function handOffUs(): Promise<number> {
  const sizes = [64, 128, 256];
  const times: number[] = [];
  const weight = matrix(64, 64);
  weight.data.fill(0.25);
  for (const rows of sizes) {
    const x = matrix(rows, 64);
    x.data.fill(0.5);
    const y = matrix(rows, 64);
    const samples: number[] = [];
    for (let burst = 0; burst < 9; burst++) {
      const calls = 100;
      await linearForward(x, { weight }, { out: y });
      const start = performance.now();
      for (let i = 0; i < calls; i++) await linearForward(x, { weight }, { out: y });
      samples.push(((performance.now() - start) * 1000) / calls);
    }
    times.push(median(samples));
  }
  // least squares t = h + c * size
  const mx = sizes.reduce((a, b) => a + b, 0) / sizes.length;
  const my = times.reduce((a, b) => a + b, 0) / times.length;
  const slope = sizes.reduce((a, v, i) => a + (v - mx) * ((times[i] as number) - my), 0) / sizes.reduce((a, v) => a + (v - mx) ** 2, 0);
  return Math.max(0, my - slope * mx);
}

// ---- the PyTorch peer

/** bench/peers/train_torch.py as a long-lived process: one JSON request and answer per line. */
class TorchPeer {
  readonly #child;
  readonly #answers: Array<(line: string) => void> = [];
  #ended: string | null = null;

  private constructor(python: string, threads: number) {
    const script = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'peers', 'train_torch.py');
    // Passive OpenMP waits: libgomp's threads otherwise spin for a while after each of the
    // peer's rounds, on the cores our next round needs (measured: our kernels 10x slower).
    const env: NodeJS.ProcessEnv = { OMP_WAIT_POLICY: 'passive', ...process.env, OMP_NUM_THREADS: String(threads) };
    delete env.OPENBLAS_CORETYPE;
    delete env.OPENBLAS_L2_SIZE;
    this.#child = spawn(python, [script], { stdio: ['pipe', 'pipe', 'pipe'], env });
    let stderr = '';
    this.#child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const end = (why: string) => {
      this.#ended = why;
      for (const answer of this.#answers.splice(0)) answer(JSON.stringify({ error: why }));
    };
    this.#child.on('error', (e) => end(e.message));
    this.#child.on('exit', (code) => end(`exited with code ${code}${stderr ? `: ${stderr.trim().split('\n').pop()}` : ''}`));
    createInterface({ input: this.#child.stdout }).on('line', (line) => this.#answers.shift()?.(line));
  }

  /** The peer, or why there is none (no interpreter, no torch). */
  static async start(python: string, threads: number): Promise<{ peer: TorchPeer | null; info: string }> {
    const peer = new TorchPeer(python, threads);
    const reply: Record<string, unknown> = await peer.request({ cmd: 'info' }).catch((e: Error) => ({ error: e.message }));
    if (typeof reply.error === 'string') {
      peer.stop();
      return { peer: null, info: reply.error };
    }
    return { peer, info: `torch ${String(reply.torch)}, ${String(reply.threads)} threads, ${python}` };
  }

  request(message: Record<string, unknown>): Promise<Record<string, unknown>> {
    if (this.#ended !== null) return Promise.reject(new Error(this.#ended));
    return new Promise((resolve, reject) => {
      this.#answers.push((line) => {
        const reply = JSON.parse(line) as Record<string, unknown>;
        if (typeof reply.error === 'string') reject(new Error(`torch peer: ${reply.error}`));
        else resolve(reply);
      });
      this.#child.stdin.write(`${JSON.stringify(message)}\n`);
    });
  }

  stop(): void {
    if (this.#ended === null) this.#child.stdin.end(`${JSON.stringify({ cmd: 'quit' })}\n`);
  }
}

// ---- the contenders

/**
 * One small learning rate for every contender (and the peer). The rate does not change the
 * work of a step, but the values can: a model pushed far by a large rate on random labels
 * drifts into saturated outputs and subnormal gradients (slow on x86), and branchy code on
 * the signs of the activations (the JavaScript ReLU this benchmark was written against took
 * 2x as long on random signs) would time the branch predictor. A small rate keeps every
 * model's activations near the base model's, so the comparison is of the layers.
 */
const LR = 1e-4;

interface Contender {
  name: string;
  /** The peer's name for the same model. */
  peerName: 'base' | 'lora' | 'eigenlora' | 'eigenlorax';
  /** The peer's samples/s, one per round (empty without the peer). */
  torch: number[];
  model: Sequential;
  /** The trainable tensors at the start, put back before every run (so that every run does the same work). */
  initial: Map<string, { shape: readonly number[]; data: Float32Array }>;
  lr: number;
  trainable: number;
  plain: number[];
  instrumented: Array<{ stepMs: number; nativeMs: number; activationMs: number; lossMs: number; optimizerMs: number; calls: number }>;
}

async function contenders(o: Options): Promise<Contender[]> {
  const frozen = baseModel(false);
  const components = new Map<string, ModuleComponents>();
  const augmented = new Map<string, ModuleComponents>();
  let seed = 100;
  for (const layer of frozen.layers) {
    if (!(layer instanceof Linear)) continue;
    const kA = Math.min(o.k, layer.inFeatures);
    const kB = Math.min(o.k, layer.outFeatures);
    const componentsA = await randomOrthonormal(layer.inFeatures, kA, seed++);
    const componentsB = await randomOrthonormal(layer.outFeatures, kB, seed++);
    components.set(layer.name, { componentsA, componentsB });
    augmented.set(layer.name, {
      componentsA: await augmentComponents(componentsA, Math.min(o.augment, layer.inFeatures - kA), { seed: seed++ }),
      componentsB: await augmentComponents(componentsB, Math.min(o.augment, layer.outFeatures - kB), { seed: seed++ }),
    });
  }
  const list: Array<Omit<Contender, 'initial' | 'trainable' | 'plain' | 'instrumented' | 'torch'>> = [
    { name: 'base (full training)', peerName: 'base', model: baseModel(true), lr: LR },
    { name: `LoRA r=${o.rank}`, peerName: 'lora', model: loraModel(frozen, { rank: o.rank, seed: 1 }), lr: LR },
    { name: `EigenLoRA K=${o.k} r=${o.rank}`, peerName: 'eigenlora', model: eigenLoraModel(frozen, { components, rank: o.rank, seed: 1 }), lr: LR },
  ];
  if (o.augment > 0) {
    list.push({
      name: `EigenLoRAx K=${o.k}+P=${o.augment} r=${o.rank}`,
      peerName: 'eigenlorax',
      model: eigenLoraModel(frozen, { components: augmented, rank: o.rank, seed: 1 }),
      lr: LR,
    });
  }
  return list.map((c) => ({
    ...c,
    initial: new Map([...c.model.stateDict({ trainableOnly: true })].map(([k, v]) => [k, { shape: v.shape, data: v.data.slice() }])),
    trainable: c.model.parameterCount({ trainable: true }),
    plain: [],
    instrumented: [],
    torch: [],
  }));
}

async function runRound(c: Contender, data: Dataset, o: Options, instrumented: boolean): Promise<void> {
  // From the same parameters every time: a model trained on and on (random labels) would
  // drift into saturated outputs with subnormal gradients, which are slow on x86.
  c.model.loadStateDict(c.initial, { trainableOnly: true });
  Object.assign(clock, { on: instrumented, nativeMs: 0, nativeCalls: 0, activationMs: 0, lossMs: 0, optimizerMs: 0 });
  const result = await trainModel(c.model, { train: data }, {
    loss: 'cross-entropy',
    optimizer: timedAdamW(c.lr),
    batchSize: o.batch,
    maxSteps: o.steps,
    epochs: 1,
    seed: 1,
    progress: false,
  });
  clock.on = false;
  const stepMs = (1000 * o.batch) / result.samplesPerSecond;
  if (!instrumented) c.plain.push(result.samplesPerSecond);
  else {
    const steps = result.stepsThisRun;
    c.instrumented.push({
      stepMs,
      nativeMs: clock.nativeMs / steps,
      activationMs: clock.activationMs / steps,
      lossMs: clock.lossMs / steps,
      optimizerMs: clock.optimizerMs / steps,
      calls: clock.nativeCalls / steps,
    });
  }
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  if (o.threads > 0) setThreads(o.threads);
  console.log('bench/train: training throughput of a 784-256-256-10 ReLU MLP');
  for (const line of machineLines()) console.log(line);
  console.log(`settings    batch ${o.batch}, ${o.steps} updates per contender per round, ${o.rounds} plain + ${o.rounds} instrumented rounds, K ${o.k}, P ${o.augment}, r ${o.rank}`);
  console.log('');

  instrumentNative();
  instrumentActivations();
  instrumentLoss();
  const list = await contenders(o);
  const data = syntheticData(o.batch * o.steps, 7);
  const { peer, info: peerInfo } = o.peer ? await TorchPeer.start(o.python, getThreads()) : { peer: null, info: 'not asked for (--no-peer)' };
  console.log(`peer        ${peer === null ? `no PyTorch peer: ${peerInfo}` : `PyTorch: ${peerInfo}`}`);
  const peerRound = async (c: Contender) => {
    if (peer !== null) c.torch.push((await peer.request({ cmd: 'round', name: c.peerName })).samplesPerSecond as number);
  };
  await peer?.request({ cmd: 'setup', batch: o.batch, steps: o.steps, rank: o.rank, k: o.k, augment: o.augment, seed: 1 });
  const before = cpuSnapshot();
  // warm-up round, not recorded
  for (const c of list) {
    await runRound(c, data, o, false);
    await peerRound(c);
  }
  for (const c of list) {
    c.plain.length = 0;
    c.torch.length = 0;
  }
  const dispatchBefore = await handOffUs();
  const started = performance.now();
  for (let round = 0; round < o.rounds; round++) {
    for (let j = 0; j < list.length; j++) {
      const c = list[(round + j) % list.length] as Contender;
      await runRound(c, data, o, false);
      await peerRound(c);
      await runRound(c, data, o, true);
    }
  }
  peer?.stop();
  const dispatchAfter = await handOffUs();
  const after = cpuSnapshot();
  const dispatchUs = (dispatchBefore + dispatchAfter) / 2;

  const lora = list[1] as Contender;
  const loraMs = (1000 * o.batch) / median(lora.plain);
  const rows = list.map((c) => {
    const sps = median(c.plain);
    const stepMs = (1000 * o.batch) / sps;
    const nativeMs = median(c.instrumented.map((r) => r.nativeMs));
    const instrumentedStep = median(c.instrumented.map((r) => r.stepMs));
    const activationMs = median(c.instrumented.map((r) => r.activationMs));
    const lossMs = median(c.instrumented.map((r) => r.lossMs));
    const optimizerMs = median(c.instrumented.map((r) => r.optimizerMs));
    const calls = median(c.instrumented.map((r) => r.calls));
    const handOffMs = (calls * dispatchUs) / 1000;
    const outsideShare = Math.max(0, instrumentedStep - nativeMs + handOffMs) / instrumentedStep;
    return {
      name: c.name,
      trainable: c.trainable,
      samplesPerSecond: { median: sps, min: Math.min(...c.plain), max: Math.max(...c.plain), rounds: c.plain },
      msPerStep: stepMs,
      /** Median over rounds of the step-time ratio to LoRA in the same round (paired: robust to machine drift). */
      vsLora: median(c.plain.map((v, i) => (lora.plain[i] as number) / v)),
      /** Quartiles of those per-round ratios. */
      vsLoraQuartiles: quartiles(c.plain.map((v, i) => (lora.plain[i] as number) / v)),
      /** Ratio of the medians. */
      vsLoraOfMedians: stepMs / loraMs,
      instrumentedMsPerStep: instrumentedStep,
      nativeMsPerStep: nativeMs,
      nativeCallsPerStep: calls,
      activationMsPerStep: activationMs,
      lossMsPerStep: lossMs,
      optimizerMsPerStep: optimizerMs,
      otherMsPerStep: Math.max(0, instrumentedStep - nativeMs - activationMs - lossMs - optimizerMs),
      handOffMsPerStep: handOffMs,
      outsideKernelShare: outsideShare,
      outsideCallsShare: Math.max(0, instrumentedStep - nativeMs) / instrumentedStep,
      /** PyTorch's samples/s (median over rounds), and the median of the per-round ratios ours / PyTorch's; null without the peer. */
      torchSamplesPerSecond: c.torch.length > 0 ? median(c.torch) : null,
      vsTorch: c.torch.length > 0 ? median(c.plain.map((v, i) => v / (c.torch[i] as number))) : null,
    };
  });

  const cells: Cell[][] = rows.map((r) => [
    r.name,
    r.trainable.toLocaleString('en-US'),
    Math.round(r.samplesPerSecond.median),
    `${Math.round(r.samplesPerSecond.min)}-${Math.round(r.samplesPerSecond.max)}`,
    sig(r.msPerStep, 3),
    `${r.vsLora.toFixed(3)}x`,
    `${r.vsLoraQuartiles[0].toFixed(2)}-${r.vsLoraQuartiles[1].toFixed(2)}`,
    `${r.vsLoraOfMedians.toFixed(3)}x`,
    r.torchSamplesPerSecond === null ? '-' : Math.round(r.torchSamplesPerSecond),
    r.vsTorch === null ? '-' : `${r.vsTorch.toFixed(2)}x`,
  ]);
  console.log(
    table(['contender', 'trainable', 'samples/s', 'range', 'ms/step', 'step vs LoRA (paired)', 'quartiles', '(of medians)', 'PyTorch samples/s', 'vs PyTorch (paired)'], cells),
  );
  console.log('');
  const split: Cell[][] = rows.map((r) => [
    r.name,
    sig(r.instrumentedMsPerStep, 3),
    sig(r.nativeMsPerStep, 3),
    r.nativeCallsPerStep,
    sig(r.activationMsPerStep, 2),
    sig(r.lossMsPerStep, 2),
    sig(r.optimizerMsPerStep, 2),
    sig(r.otherMsPerStep, 2),
    sig(r.handOffMsPerStep, 2),
    `${(100 * r.outsideCallsShare).toFixed(1)}%`,
    `${(100 * r.outsideKernelShare).toFixed(1)}%`,
  ]);
  console.log(
    table(['instrumented step', 'ms/step', 'in native calls', 'calls', 'ReLU', 'loss', 'optimiser', 'other JS', 'hand-off', 'outside calls', 'outside kernels'], split),
  );
  console.log(`hand-off    a queued native call spends ${sig(dispatchUs, 3)} us in hand-offs (intercept of 64-256-row layers through a 64 x 64 weight; before and after the rounds)`);
  const eigen = rows[2] as (typeof rows)[number];
  const stepMet = eigen.vsLora <= 1;
  const overheadMet = rows.filter((r) => r.name !== rows[0]?.name).every((r) => r.outsideKernelShare <= 0.2);
  const adapters = rows.slice(1);
  const torchMet = peer === null ? null : adapters.every((r) => (r.vsTorch ?? 0) >= 1.5);
  console.log('');
  console.log(
    `target      samples/s >= 1.5x PyTorch (LoRA, EigenLoRA, EigenLoRAx): ${torchMet === null ? 'NOT MEASURED (no PyTorch peer)' : torchMet ? 'MET' : 'NOT MET'}` +
      (torchMet === null ? '' : ` (${adapters.map((r) => `${r.name} ${(r.vsTorch ?? 0).toFixed(2)}x`).join(', ')})`),
  );
  console.log(
    `target      EigenLoRA step <= LoRA step at batch ${o.batch}: ${stepMet ? 'MET' : 'NOT MET'} ` +
      `(paired ratio ${eigen.vsLora.toFixed(3)}, quartiles ${eigen.vsLoraQuartiles[0].toFixed(3)}-${eigen.vsLoraQuartiles[1].toFixed(3)})`,
  );
  console.log(
    `target      outside-kernel overhead <= 20% of a step (adapter models): ${overheadMet ? 'MET' : 'NOT MET'} (` +
      rows.map((r) => `${r.name} ${(100 * r.outsideKernelShare).toFixed(1)}%`).join(', ') +
      ')',
  );
  console.log(otherLoadLine(before, after));
  console.log(`elapsed     ${((performance.now() - started) / 1000).toFixed(1)} s; load average ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}`);

  const record = {
    benchmark: 'train',
    date: new Date().toISOString(),
    machine: machineLines(),
    threads: getThreads(),
    settings: { ...o, widths: WIDTHS },
    handOffMicroseconds: dispatchUs,
    contenders: rows,
    targets: {
      stepCost: { description: `EigenLoRA step <= LoRA step at batch ${o.batch}`, ratio: eigen.vsLora, met: stepMet },
      vsTorch: { description: 'samples/s >= 1.5x PyTorch (LoRA, EigenLoRA, EigenLoRAx)', peer: peerInfo, met: torchMet },
      overhead: {
        description: 'outside-kernel share of a step <= 20% (LoRA, EigenLoRA, EigenLoRAx)',
        shares: Object.fromEntries(rows.map((r) => [r.name, r.outsideKernelShare])),
        met: overheadMet,
      },
    },
  };
  await mkdir(path.dirname(o.json), { recursive: true });
  await writeFile(o.json, `${JSON.stringify(record, null, 2)}\n`);
  console.log(`json        ${o.json}`);
}

await main();
