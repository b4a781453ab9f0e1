/**
 * What the memory-safe boundary costs (issue 13): queued native calls copy their inputs
 * into memory the job owns and write their outputs back on the JS thread, so that no
 * detach, transfer, resize or collection during the call can make native code touch freed
 * memory. Times loraForward, rsvd and toFloat32 at a few sizes through the addon under
 * test and, given --baseline <addon.node> (a build of the code before the change), through
 * that one too, each in its own process; prints both and their ratio. The "owned" rows pass
 * arrays over memory the addon owns (ownedMatrix), which it uses in place (0 MB copied);
 * with an addon that has no owned buffers they are ordinary arrays.
 *
 *   npm run build && node dist/bench/boundary.js [--baseline path/to/old/eigenlorax.node] [--rounds-scale X]
 *   node dist/bench/boundary.js --help      the flags
 *
 * Prints tables; never passes or fails on time.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Option } from 'commander';
import { loraForward, matrix, ownedMatrix, rsvd, toFloat32, type Matrix } from '../lib/index.js';
import { benchCommand, cpuSnapshot, fillGaussian, machineLines, median, ms, now, numberArg, otherLoadLine, ratio, table } from './common.js';

interface Case {
  name: string;
  /** Megabytes copied in and out by the safe boundary. */
  copiedMB: number;
  rounds: number;
  setup: () => () => Promise<unknown>;
}

/** An ordinary matrix, or one the addon owns (used in place, not copied; an ordinary one from an addon without them). */
const m = (rows: number, cols: number, seed: number, owned = false): Matrix => {
  const a = owned ? ownedMatrix(rows, cols) : matrix(rows, cols);
  fillGaussian(a.data, seed);
  return a;
};

function lora(n: number, d: number, r: number, withWeight: boolean, owned = false): Case {
  const inMB = ((n * d + 2 * r * d + (withWeight ? d * d : 0)) * 4) / 2 ** 20;
  const outMB = (2 * n * d * 4) / 2 ** 20; // copied in (in-out semantics) and back
  return {
    name: `loraForward n=${n} d=${d} r=${r}${withWeight ? ' +W' : ''}${owned ? ' owned' : ''}`,
    copiedMB: owned ? 0 : inMB + outMB,
    rounds: n === 1 ? 60 : 20,
    setup: () => {
      const x = m(n, d, 1, owned);
      const layer = { A: m(r, d, 2, owned), B: m(d, r, 3, owned), scale: 0.5, ...(withWeight ? { weight: m(d, d, 4, owned) } : {}) };
      const out = owned ? ownedMatrix(n, d) : matrix(n, d);
      return () => loraForward(x, layer, { out });
    },
  };
}

function svd(n: number, rank: number): Case {
  return {
    name: `rsvd ${n}x${n} rank ${rank}`,
    copiedMB: ((n * n + 2 * n * rank * 2) * 4) / 2 ** 20,
    rounds: 5,
    setup: () => {
      const a = m(n, n, 5);
      return () => rsvd(a, { rank, powerIters: 2 });
    },
  };
}

function convert(count: number): Case {
  return {
    name: `toFloat32 bf16 ${count / 2 ** 20}M`,
    copiedMB: (count * 6) / 2 ** 20,
    rounds: 20,
    setup: () => {
      const src = new Uint16Array(count);
      for (let i = 0; i < count; i++) src[i] = 0x3f80 + (i & 0xff);
      return () => toFloat32(src, 'bf16');
    },
  };
}

function cases(scale: number): Case[] {
  const all = [
    lora(1, 4096, 16, true),
    lora(64, 4096, 16, true),
    lora(64, 4096, 16, false),
    lora(1024, 1024, 16, true),
    lora(64, 4096, 16, true, true),
    lora(1024, 1024, 16, true, true),
    svd(1024, 32),
    svd(2048, 64),
    convert(1 << 20),
    convert(1 << 24),
  ];
  return all.map((c) => ({ ...c, rounds: Math.max(3, Math.round(c.rounds * scale)) }));
}

async function child(scale: number): Promise<void> {
  const times: number[] = [];
  for (const c of cases(scale)) {
    const call = c.setup();
    await call();
    await call();
    const samples: number[] = [];
    for (let i = 0; i < c.rounds; i++) {
      const t0 = now();
      await call();
      samples.push((now() - t0) / 1e3);
    }
    times.push(median(samples));
  }
  console.log(JSON.stringify(times));
}

function measure(addon: string | undefined, scale: number): number[] {
  const env = { ...process.env };
  if (addon) env.EIGENLORAX_ADDON = addon;
  else delete env.EIGENLORAX_ADDON;
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', '--rounds-scale', String(scale)], {
    env,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (r.status !== 0) throw new Error(`benchmark child failed (${addon ?? 'default addon'})`);
  return JSON.parse(r.stdout.trim().split('\n').pop() as string) as number[];
}

const options = benchCommand('boundary.js', 'what the memory-safe boundary costs: loraForward, rsvd and toFloat32 through the addon, against a baseline addon')
  .addOption(new Option('--baseline <addon.node>', 'an addon built from the code before the change, timed in its own process (default: none)'))
  .addOption(new Option('--rounds-scale <x>', 'multiplies the timed calls of every case (at least 3 each)').default(1).argParser(numberArg({ above: 0 })))
  // The child that measure() starts: times the cases through the addon it loads, prints one JSON line.
  .addOption(new Option('--child').hideHelp())
  .parse(process.argv.slice(2), { from: 'user' })
  .opts<{ baseline?: string; roundsScale: number; child?: true }>();
const scale = options.roundsScale;
if (options.child) {
  await child(scale);
} else {
  const baseline = options.baseline;
  console.log(machineLines().join('\n'));
  const before = cpuSnapshot();
  const old = baseline ? measure(baseline, scale) : null;
  const current = measure(process.env.EIGENLORAX_ADDON, scale);
  const after = cpuSnapshot();
  console.log(otherLoadLine(before, after));
  console.log(`baseline    ${baseline ?? 'none (pass --baseline <addon.node> built from the code before the change)'}\n`);
  console.log(
    table(
      ['call', 'copied MB', 'baseline ms', 'safe ms', 'safe / baseline'],
      cases(scale).map((c, i) => [
        c.name,
        c.copiedMB.toFixed(1),
        old ? ms(old[i] as number) : 'n/a',
        ms(current[i] as number),
        old ? ratio((current[i] as number) / (old[i] as number)) : 'n/a',
      ]),
    ),
  );
}
