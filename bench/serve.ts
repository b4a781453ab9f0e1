/**
 * Many adapters in one batch: the EigenLoRA coefficient bank against a single adapter and
 * against the per-row LoRA baseline.
 *
 *   npm run bench:serve
 *   node dist/bench/serve.js [--rows 256] [--d 4096] [--k 64] [--r 16] [--counts 1,16,256,1024] [--rounds 7] [--assign spread|random] [--threads N]
 *   node dist/bench/serve.js --help      the flags
 *
 * One layer, d_in = d_out = d, components K_A = K_B = K, adapters of rank r (coefficient
 * sets alpha, beta: K x r, scale 1, on random orthonormal components: the values do not
 * change the work). N adapters are registered (all of them in both banks); the rows of a
 * batch are assigned round robin when N <= rows (N distinct adapters in the batch), and
 * one adapter per row spread evenly over all N when N > rows (so at 1024 adapters a
 * 256-row batch holds 256 distinct ones, scattered over the whole bank); `--assign random`
 * draws each row's adapter uniformly instead (seeded). The tables say how many distinct
 * adapters each batch holds.
 *
 * (i)   The whole layer, y = x W^T + b + adapters: AdapterBank.apply with weight and bias
 *       (eigenBankApply) against the same layer with one adapter for the whole batch
 *       (eigenLoraForward with weight and bias, its cheaper order of products).
 *       Target: bank throughput >= 80% of the single-adapter layer at 1024 adapters.
 * (ii)  The adapter part alone (no weight): AdapterBank.apply against LoraBank.apply
 *       (loraBankApply, each row gathering its adapter's own A_i, B_i), where the LoRA
 *       adapters are the reconstructions (A = alpha^T V_A^T, B = U_B beta) of the same
 *       coefficients; both outputs are compared. Target: >= 3x at r = 16, and >= 1x at 1
 *       and 16 adapters. The bank keeps its hot adapters' rank pairs between calls (its
 *       pair cache, warm after the untimed call); the same bank without that cache is
 *       timed beside it. A last row rotates batches of 16 adapters over 64 (more pairs
 *       than the default cache holds): the cache's worst case, every batch a miss.
 * (iii) The memory the N adapters need in each form.
 *
 * Contenders are interleaved round by round; times are medians over rounds (each round
 * times a short burst of calls after one untimed call). Prints tables; never passes or
 * fails on time.
 */
import { Option } from 'commander';
import {
  AdapterBank,
  LoraBank,
  eigenLoraForward,
  linearForward,
  matrix,
  orthonormalize,
  reconstructAdapter,
  setThreads,
  type AdapterCoefficients,
  type Matrix,
  type ModuleCoefficients,
  type Subspace,
  type SubspaceModule,
} from '../lib/index.js';
import { benchCommand, choiceArg, cpuSnapshot, fillGaussian, integerArg, integerListArg, machineLines, median, ms, now, otherLoadLine, ratio, sig, table, type Cell } from './common.js';
import { mulberry32 } from '../lib/random.js';

const MODULE = 'layer';
const TARGET_LAYER = 0.8;
const TARGET_ADAPTER = 3;
/** The rotating row of (ii): batches of ROTATING_SET adapters, ROTATING_SETS sets in turn. */
const ROTATING_SET = 16;
const ROTATING_SETS = 4;

function parseOptions(argv: string[]) {
  return benchCommand('serve.js', 'many adapters in one batch: the EigenLoRA AdapterBank against one adapter for the whole batch and against the per-row LoRA baseline LoraBank')
    .addOption(new Option('--rows <n>', 'rows per batch').default(256).argParser(integerArg()))
    .addOption(new Option('--d <n>', "the layer's d_in = d_out").default(4096).argParser(integerArg()))
    .addOption(new Option('--k <n>', 'components K_A = K_B').default(64).argParser(integerArg()))
    .addOption(new Option('--r <n>', 'rank r of the adapters').default(16).argParser(integerArg()))
    .addOption(new Option('--counts <list>', 'adapter counts N, one row of each table per count (max N registered in both banks)').default([1, 16, 256, 1024], '1,16,256,1024').argParser(integerListArg()))
    .addOption(new Option('--rounds <n>', 'rounds, contenders interleaved (medians)').default(7).argParser(integerArg()))
    .addOption(
      new Option('--assign <spread|random>', "each row's adapter: round robin / spread evenly over the N, or uniformly at random (seeded)")
        .default('spread')
        .argParser(choiceArg(['spread', 'random'] as const)),
    )
    .addOption(new Option('--threads <n>', "the kernels' threads (setThreads) for the whole run; 0: the library default, all cores").default(0).argParser(integerArg(0)))
    .parse(argv, { from: 'user' })
    .opts<{ rows: number; d: number; k: number; r: number; counts: number[]; rounds: number; assign: 'spread' | 'random'; threads: number }>();
}

function gaussian(rows: number, cols: number, seed: number, scale = 1): Matrix {
  const m = matrix(rows, cols);
  fillGaussian(m.data, seed, scale);
  return m;
}

/** A one-module subspace over random orthonormal components (what AdapterBank and reconstructAdapter read). */
async function syntheticSubspace(d: number, k: number): Promise<Subspace> {
  const componentsA = await orthonormalize(gaussian(d, k, 11));
  const componentsB = await orthonormalize(gaussian(d, k, 12));
  const module: SubspaceModule = {
    name: MODULE,
    dIn: d,
    dOut: d,
    layout: 'linear',
    convKernel: null,
    fanInFanOut: false,
    kA: k,
    kB: k,
    augmentA: 0,
    augmentB: 0,
    componentsA,
    componentsB,
    singularA: new Float32Array(k),
    singularB: new Float32Array(k),
    energyA: 0,
    energyB: 0,
    explainedA: 1,
    explainedB: 1,
    meanA: null,
    meanB: null,
    adapters: [],
    ranks: [],
  };
  return {
    formatVersion: 1,
    id: 'bench-serve-synthetic',
    libraryVersion: 'bench',
    settings: {
      stacking: 'canonical',
      weighting: 'equal',
      center: false,
      components: { A: k, B: k },
      variance: null,
      maxComponents: null,
      augment: { A: 0, B: 0 },
      oversample: 10,
      powerIters: 2,
      seed: 0,
    },
    sources: [],
    baseModel: null,
    modules: new Map([[MODULE, module]]),
    coefficients: [],
    report: null,
  };
}

function coefficientsOf(subspace: Subspace, i: number, k: number, r: number): AdapterCoefficients {
  const mc: ModuleCoefficients = {
    name: MODULE,
    rank: r,
    alpha: gaussian(k, r, 1000 + 2 * i, 1 / Math.sqrt(k)),
    beta: gaussian(k, r, 1001 + 2 * i, 1 / Math.sqrt(r)),
    scale: 1,
    adapterAlpha: r,
    rslora: false,
    adapterScale: 1,
    norm: 0,
    error: 0,
    relativeError: 0,
  };
  return {
    subspaceId: subspace.id,
    stacking: 'canonical',
    adapter: { name: `adapter-${i}`, path: null, format: 'peft', baseModel: null, files: [] },
    modules: new Map([[MODULE, mc]]),
    skipped: [],
    norm: 0,
    error: 0,
    relativeError: 0,
  };
}

interface Contender {
  name: string;
  run: () => Promise<unknown>;
  times: number[];
}

/** Rounds of: every contender (rotating the order), one untimed call then `burst` timed ones. */
async function measure(contenders: Contender[], rounds: number, burst: number): Promise<void> {
  for (let round = 0; round < rounds; round++) {
    for (let c = 0; c < contenders.length; c++) {
      const contender = contenders[(c + round) % contenders.length]!;
      await contender.run();
      for (let b = 0; b < burst; b++) {
        const t0 = now();
        await contender.run();
        contender.times.push((now() - t0) / 1e3);
      }
    }
  }
}

function maxRelativeDifference(a: Float32Array, b: Float32Array): number {
  let scale = 0;
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    scale = Math.max(scale, Math.abs(b[i]!));
    worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  }
  return worst / scale;
}

const MiB = 2 ** 20;
const mib = (bytes: number) => `${sig(bytes / MiB, 3)} MiB`;

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  const { rows: n, d, k, r } = o;
  const maxCount = Math.max(...o.counts);
  if (o.threads > 0) setThreads(o.threads);
  console.log('bench/serve: many adapters in one batch\n');
  for (const line of machineLines()) console.log(line);
  console.log(`\nlayer       d_in = d_out = ${d}, K_A = K_B = ${k}, r = ${r}, ${n} rows per batch, ${maxCount} adapters registered, rows assigned: ${o.assign}`);
  const before = cpuSnapshot();

  const t0 = now();
  const subspace = await syntheticSubspace(d, k);
  const module = subspace.modules.get(MODULE)!;
  const coefficients = Array.from({ length: maxCount }, (_, i) => coefficientsOf(subspace, i, k, r));
  const eigen = new AdapterBank(subspace);
  const tRegister = now();
  coefficients.forEach((c, i) => eigen.register(`adapter-${i}`, c));
  const registerMs = now() - tRegister;
  // The same bank without its cache of hot adapters' rank pairs: what a batch costs when
  // it builds its pairs (or takes the shared products) from scratch.
  const uncached = new AdapterBank(subspace, { pairCacheBytes: 0 });
  coefficients.forEach((c, i) => uncached.register(`adapter-${i}`, c));
  const lora = new LoraBank();
  for (let i = 0; i < maxCount; i++) lora.register(`adapter-${i}`, await reconstructAdapter(subspace, coefficients[i]!));
  const weight = gaussian(d, d, 21, 1 / Math.sqrt(d));
  const bias = gaussian(1, d, 22).data;
  const x = gaussian(n, d, 23);
  console.log(
    `setup       ${sig((now() - t0) / 1e3, 3)} s (registering ${maxCount} coefficient sets in the AdapterBank: ${sig(registerMs, 3)} ms, ` +
      `${sig((registerMs * 1e3) / maxCount, 3)} us each)`,
  );

  const random = mulberry32(7);
  const assignments = o.counts.map((count) => {
    // spread: round robin when count <= rows (exactly `count` distinct adapters), else one
    // adapter per row spread evenly over the whole bank; random: uniform draws.
    const pick = (b: number) =>
      o.assign === 'random' ? Math.floor(random() * count) : count <= n ? b % count : Math.floor((b * count) / n);
    const names = Array.from({ length: n }, (_, b) => `adapter-${pick(b)}`);
    return { count, distinct: new Set(names).size, eigenRows: eigen.rows(names), loraRows: lora.rows(names) };
  });

  // Correctness first: both banks give the same y on the same batch (adapters only).
  const check: Array<{ count: number; diff: number }> = [];
  for (const a of assignments) {
    const ye = await eigen.apply(MODULE, x, a.eigenRows);
    const yu = await uncached.apply(MODULE, x, a.eigenRows);
    const yl = await lora.apply(MODULE, x, a.loraRows);
    check.push({ count: a.count, diff: Math.max(maxRelativeDifference(ye.data, yl.data), maxRelativeDifference(yu.data, yl.data)) });
  }

  // (i) The whole layer.
  const out = matrix(n, d);
  const c0 = coefficients[0]!.modules.get(MODULE)!;
  const single: Contender = {
    name: 'single',
    times: [],
    run: () => eigenLoraForward(x, { componentsA: module.componentsA, alpha: c0.alpha, beta: c0.beta, componentsB: module.componentsB, scale: 1, weight, bias }, { out }),
  };
  const baseOnly: Contender = { name: 'base', times: [], run: () => linearForward(x, { weight, bias }, { out }) };
  const layer = assignments.map(
    (a): Contender => ({ name: `bank ${a.count}`, times: [], run: () => eigen.apply(MODULE, x, a.eigenRows, { weight, bias, out }) }),
  );
  await measure([single, baseOnly, ...layer], o.rounds, 2);

  // (ii) The adapter part alone.
  const eigenOnly = assignments.map((a): Contender => ({ name: `eigen ${a.count}`, times: [], run: () => eigen.apply(MODULE, x, a.eigenRows, { out }) }));
  const loraOnly = assignments.map((a): Contender => ({ name: `lora ${a.count}`, times: [], run: () => lora.apply(MODULE, x, a.loraRows, { out }) }));
  const uncachedOnly = assignments.map(
    (a): Contender => ({ name: `uncached ${a.count}`, times: [], run: () => uncached.apply(MODULE, x, a.eigenRows, { out }) }),
  );
  // The pair cache's worst case: each batch takes the next of four sets of 16 adapters (64 in
  // turn), more pairs than the cache holds, so every batch builds all of its pairs.
  const rotation = Array.from({ length: ROTATING_SETS }, (_, set) =>
    Array.from({ length: n }, (_, b) => `adapter-${(set * ROTATING_SET + (b % ROTATING_SET)) % maxCount}`),
  );
  const rotating = (name: string, bank: { rows: (names: string[]) => Int32Array; apply: typeof eigen.apply }): Contender => {
    const sets = rotation.map((names) => bank.rows(names));
    let next = 0;
    return { name, times: [], run: () => bank.apply(MODULE, x, sets[next++ % sets.length]!, { out }) };
  };
  const rotated = [rotating('eigen rotating', eigen), rotating('lora rotating', lora), rotating('uncached rotating', uncached)];
  await measure([...eigenOnly, ...loraOnly, ...uncachedOnly, ...rotated], o.rounds, 5);

  const tSingle = median(single.times);
  const tBase = median(baseOnly.times);
  console.log(`\n(i) whole layer (x W^T + b + adapters), ${n} rows; single = eigenLoraForward with one adapter for every row`);
  const rowsI: Cell[][] = [
    ['base only (linearForward)', '-', ms(tBase), sig(n / tBase, 4), ratio(tSingle / tBase)],
    ['single adapter (eigenLoraForward)', 1, ms(tSingle), sig(n / tSingle, 4), ratio(1)],
  ];
  layer.forEach((c, i) => {
    const t = median(c.times);
    rowsI.push([`AdapterBank, ${assignments[i]!.count} adapters`, assignments[i]!.distinct, ms(t), sig(n / t, 4), ratio(tSingle / t)]);
  });
  console.log(table(['layer', 'distinct in batch', 'median ms', 'rows/s', 'throughput vs single'], rowsI));

  console.log(`\n(ii) adapter part alone (no weight), ${n} rows, r = ${r}; LoRA adapters = reconstructions of the same coefficients`);
  const rowsII: Cell[][] = assignments.map((a, i) => {
    const te = median(eigenOnly[i]!.times);
    const tl = median(loraOnly[i]!.times);
    const tu = median(uncachedOnly[i]!.times);
    return [a.count, a.distinct, ms(te), ms(tl), ratio(tl / te), ms(tu), ratio(tl / tu), check[i]!.diff.toExponential(1)];
  });
  const [te, tl, tu] = rotated.map((c) => median(c.times));
  rowsII.push([`${ROTATING_SET} of ${ROTATING_SET * ROTATING_SETS}, rotating`, ROTATING_SET, ms(te!), ms(tl!), ratio(tl! / te!), ms(tu!), ratio(tl! / tu!), '-']);
  console.log(
    table(
      ['adapters', 'distinct in batch', 'AdapterBank ms', 'LoraBank ms', 'LoRA/eigen', 'no pair cache ms', 'LoRA/no cache', 'max |y_e - y_l| / max |y_l|'],
      rowsII,
    ),
  );

  console.log(`\n(iii) memory the adapters need (f32), shared components V_A, U_B: ${mib(module.componentsA.data.byteLength + module.componentsB.data.byteLength)} once`);
  const rowsIII: Cell[][] = o.counts.map((count) => {
    const mixing = count * k * k * 4;
    const coeffs = count * r * 2 * k * 4;
    const loraBytes = count * r * 2 * d * 4;
    return [count, mib(mixing), mib(coeffs), mib(loraBytes), ratio(loraBytes / mixing)];
  });
  console.log(table(['adapters', 'mixing N K_A K_B', 'coefficients N r (K_A+K_B)', 'LoRA N r (d_in+d_out)', 'LoRA/mixing'], rowsIII));
  const em = eigen.memory().total;
  const lm = lora.memory().total;
  console.log(
    `measured    AdapterBank with ${maxCount}: mixing ${mib(em.mixingBytes)} (allocated ${mib(em.mixingAllocatedBytes)}), components ${mib(em.componentsBytes)}, ` +
      `pair cache ${mib(em.pairCacheBytes)} (+ its copy of the components ${mib(em.pairCacheComponentsBytes)}); ` +
      `LoraBank with ${maxCount}: factors ${mib(lm.loraBytes)}`,
  );

  const last = assignments.length - 1;
  const atMax = assignments[last]!;
  const layerRatio = tSingle / median(layer[last]!.times);
  const adapterRatio = median(loraOnly[last]!.times) / median(eigenOnly[last]!.times);
  console.log('\nverdict');
  console.log(
    `  (i)  layer throughput at ${atMax.count} adapters vs a single adapter: ${(100 * layerRatio).toFixed(0)}% ` +
      `(target >= ${100 * TARGET_LAYER}%): ${layerRatio >= TARGET_LAYER ? 'MET' : 'NOT MET'}`,
  );
  console.log(
    `  (ii) adapter part at ${atMax.count} adapters, LoRA baseline / AdapterBank: ${ratio(adapterRatio)} (target >= ${TARGET_ADAPTER}x): ` +
      `${adapterRatio >= TARGET_ADAPTER ? 'MET' : 'NOT MET'}`,
  );
  const worst = Math.max(...check.map((c) => c.diff));
  console.log(`  check: both banks agree to ${worst.toExponential(1)} (max relative difference over the counts)`);
  console.log(`\n${otherLoadLine(before, cpuSnapshot())}`);
  console.log(`load after  ${machineLines()[2]!.replace(/^memory\s+/, '')}`);
}

await main();
