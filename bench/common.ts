/**
 * Shared pieces of the benchmarks: the command line (commander, with the flag-value parsers
 * every benchmark uses), the machine record, medians, seeded test data and plain-text
 * tables. Benchmarks print numbers and ratios; they never pass or fail on time.
 */
import os from 'node:os';
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import { parseChoice, parseInteger, parseNumber, UsageError, type NumberRange } from '../lib/cli/options.js';
import { buildInfo, getThreads, version } from '../lib/index.js';
import { mulberry32 } from '../lib/random.js';

export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** Milliseconds since an arbitrary origin, sub-millisecond resolution. */
export function now(): number {
  return performance.now();
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function cpuModel(): string {
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('model name'));
    if (line) return line.split(':').slice(1).join(':').trim();
  } catch {
    // not Linux: fall through to os.cpus()
  }
  return os.cpus()[0]?.model ?? 'unknown';
}

/** Lines describing the machine and the software, printed at the top of every benchmark. */
export function machineLines(): string[] {
  const info = buildInfo();
  const load = os.loadavg().map((v) => v.toFixed(2)).join(' ');
  return [
    `date        ${new Date().toISOString()}`,
    `cpu         ${cpuModel()}, ${os.availableParallelism()} logical cores (${os.cpus().length} listed), ${os.arch()}`,
    `memory      ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB, load average ${load} (1/5/15 min)`,
    `os          ${os.type()} ${os.release()}`,
    `node        ${process.version}, eigenlorax ${version}, Eigen ${info.eigen}, SIMD ${info.simd}`,
    `threads     eigenlorax ${getThreads()} (OpenMP ${info.openmp ? 'on' : 'off'}, hardware ${info.hardwareThreads}), ` +
      `libuv pool ${process.env.UV_THREADPOOL_SIZE ?? '4 (default)'}, OMP_WAIT_POLICY ${process.env.OMP_WAIT_POLICY ?? 'unset'}`,
  ];
}


/** Fills `out` with N(0, scale^2) draws (Box-Muller); for small and medium arrays. */
export function fillGaussian(out: Float32Array, seed: number, scale = 1): void {
  const u = mulberry32(seed);
  for (let i = 0; i < out.length; i += 2) {
    const radius = Math.sqrt(-2 * Math.log(1 - u())) * scale;
    const angle = 2 * Math.PI * u();
    out[i] = radius * Math.cos(angle);
    if (i + 1 < out.length) out[i + 1] = radius * Math.sin(angle);
  }
}

/** Adds iid uniform noise in [-amplitude, amplitude]: xorshift32, fast enough for 10^8 entries. */
export function addUniformNoise(out: Float32Array, seed: number, amplitude: number): void {
  let s = (seed >>> 0) || 2463534242;
  const scale = (2 * amplitude) / 4294967296;
  for (let i = 0; i < out.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = (out[i] as number) + ((s >>> 0) * scale - amplitude);
  }
}

interface CpuSnapshot {
  busy: number;
  total: number;
  own: number;
}

function readTicks(file: string, fields: number[]): number {
  // /proc/<pid>/stat: the command name may hold spaces, so count fields after its ')'.
  const text = readFileSync(file, 'utf8');
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return fields.reduce((sum, field) => sum + Number(rest[field - 3]), 0);
}

/**
 * CPU time of the whole machine and of this benchmark (this process, its finished
 * children, and the `pids` still running), from /proc; null where /proc is missing.
 */
export function cpuSnapshot(pids: number[] = []): CpuSnapshot | null {
  try {
    const cpu = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    const total = cpu.slice(0, 8).reduce((a, b) => a + b, 0);
    const busy = total - (cpu[3] ?? 0) - (cpu[4] ?? 0);
    let own = readTicks('/proc/self/stat', [14, 15, 16, 17]);
    for (const pid of pids) {
      try {
        own += readTicks(`/proc/${pid}/stat`, [14, 15]);
      } catch {
        // already gone: counted by the parent's children time if it was waited for
      }
    }
    return { busy, total, own };
  } catch {
    return null;
  }
}

/**
 * A line saying how much of the machine other processes used between two snapshots,
 * with a warning when that is enough to distort multi-threaded timings.
 */
export function otherLoadLine(before: CpuSnapshot | null, after: CpuSnapshot | null): string {
  if (!before || !after || after.total <= before.total) return 'other load  unknown (no /proc)';
  const others = Math.max(0, after.busy - before.busy - (after.own - before.own));
  const share = others / (after.total - before.total);
  const line = `other load  processes other than this benchmark used ${(100 * share).toFixed(0)}% of the CPUs during the run`;
  return share > 0.1
    ? `${line}\nWARNING     the machine was busy: multi-threaded timings (OpenMP, OpenBLAS) suffer unevenly; ratios are unreliable`
    : line;
}

export type Cell = string | number;

/** A plain-text table: numbers right-aligned, text left-aligned. */
export function table(header: string[], rows: Cell[][]): string {
  const text = rows.map((row) => row.map((cell) => String(cell)));
  const widths = header.map((h, i) => Math.max(h.length, ...text.map((row) => (row[i] ?? '').length)));
  const isNumeric = header.map((_, i) => rows.every((row) => typeof row[i] === 'number' || /^[-+]?[\d.]/.test(String(row[i] ?? '')) || row[i] === 'n/a' || row[i] === '-'));
  const line = (cells: string[]) =>
    cells.map((c, i) => (isNumeric[i] ? c.padStart(widths[i] as number) : c.padEnd(widths[i] as number))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...text.map(line)].join('\n');
}

/** A number with `digits` significant digits, without exponent for ordinary sizes. */
export function sig(value: number, digits = 3): string {
  if (!Number.isFinite(value)) return 'n/a';
  if (value === 0) return '0';
  const magnitude = Math.floor(Math.log10(Math.abs(value)));
  if (magnitude < -3 || magnitude > 6) return value.toExponential(digits - 1);
  return value.toFixed(Math.max(0, digits - 1 - magnitude));
}

export function ms(seconds: number): string {
  return Number.isFinite(seconds) ? sig(seconds * 1e3, 3) : 'n/a';
}

export function ratio(value: number): string {
  return Number.isFinite(value) ? `${sig(value, 3)}x` : 'n/a';
}

export function exp(value: number): string {
  return Number.isFinite(value) ? value.toExponential(1) : 'n/a';
}

/**
 * This process's peak resident set in bytes. On Linux, VmHWM of /proc/self/status: the
 * high-water mark of this process image only (getrusage's maxRSS would also count the
 * parent's memory, which Linux carries across fork + exec). Elsewhere resourceUsage().maxRSS.
 */
export function peakRss(): number {
  try {
    const line = readFileSync('/proc/self/status', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('VmHWM:'));
    const kib = line === undefined ? Number.NaN : Number(line.replace(/[^0-9]/g, ''));
    if (Number.isFinite(kib)) return kib * 1024;
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS * 1024;
}

// ------------------------------------------------------------------------------------
// Command line

/**
 * The command line of a benchmark, `node dist/bench/<script>`, with `description` (one
 * line) at the top of its --help. commander prints --help (exit 0) and every mistake: an
 * unknown flag, a missing value, a positional argument, or a value that a parser below
 * rejects (`option '--dim <n>' argument 'x' is invalid. expected a positive integer`),
 * then exits with code 1. Parse with `.parse(argv, { from: 'user' })` and read `.opts()`.
 */
export function benchCommand(script: string, description: string): Command {
  return new Command(`node dist/bench/${script}`)
    .description(description)
    .helpOption('-h, --help', 'print this help')
    .showHelpAfterError('(--help lists the flags)')
    .allowExcessArguments(false);
}

// commander argParser forms of the `eigenlorax` commands' own value parsers
// (lib/cli/options.ts): `.argParser(integerArg(0))`. commander's message names the flag and
// the value; the parser's says what was expected.

/** `parse` as an argParser: its UsageError becomes commander's InvalidArgumentError. */
const asArgument =
  <T>(parse: (text: string) => T) =>
  (text: string): T => {
    try {
      return parse(text);
    } catch (error) {
      if (error instanceof UsageError) throw new InvalidArgumentError(error.message);
      throw error;
    }
  };

/** A whole number >= min (default 1: a positive integer). */
export const integerArg = (min = 1) => asArgument((text) => parseInteger('the value', text, { min }));

/** A comma-separated list of whole numbers >= min (default 1), as 6,24. */
export const integerListArg = (min = 1) => asArgument((text) => text.split(',').map((part) => parseInteger('each entry', part, { min })));

/** A finite number: above 0 with `{ above: 0 }`, at least 0 with `{ min: 0 }`. */
export const numberArg = (range: NumberRange) => asArgument((text) => parseNumber('the value', text, range));

/** One of `choices`, compared as given, or upper-cased first with `upper` (bf16 -> BF16). */
export const choiceArg = <T extends string>(choices: readonly T[], upper = false) => asArgument((text) => parseChoice('the value', text, choices, upper));
