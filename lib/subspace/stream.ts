/**
 * Out-of-core modules (DESIGN §5): when a module's stacks would not fit the memory budget,
 * its adapters are read in chunks, once per pass of the native stream
 * (native/core/subspace_stream.h), the next chunk read while the current one is computed,
 * and projected chunk by chunk. Memory: d x (K + p) per side plus two chunks, whatever the
 * number of adapters.
 */
import { EigenLoraxError } from '../errors.js';
import type { Matrix } from '../matrix.js';
import * as ops from '../native/ops.js';
import type { NativeModulePair, NativeStacking, NativeWeighting } from '../native/ops.js';
import { projectPairs } from './coefficients.js';
import { runPool, type InputAdapter, type ModuleInfo } from './inputs.js';
import type { SubspaceModule, Stacking } from './types.js';

/** The adapters holding one module, in build order. */
export interface ModuleHolders {
  name: string;
  holders: ReadonlyArray<{ adapter: InputAdapter; info: ModuleInfo }>;
}

/** Times operations of one kind (build.ts's BusyClock). */
export interface Clock {
  time<T>(body: () => Promise<T>): Promise<T>;
}

/**
 * Elements of one holder's factors that a read puts in an arena: none for an adapter in
 * memory (it returns its own) or one whose file the native kernels read themselves.
 */
const arenaFloats = (name: string, { adapter, info }: ModuleHolders['holders'][number]) =>
  adapter.kind === 'loaded' || adapter.locate(name) !== null ? 0 : info.rank * (info.inFeatures + info.outFeatures);

/** The float32 elements {@link readPairs} puts in an arena for all of `plan`'s holders. */
export function pairFloats(plan: ModuleHolders): number {
  return plan.holders.reduce((n, h) => n + arenaFloats(plan.name, h), 0);
}

/**
 * The factors of holders [from, to) of `plan`: where the native kernels read the file
 * themselves (see InputAdapter.locate), where they are; else read here (16 reads in
 * flight), into `arena` when given (at least {@link pairFloats} elements), one after the other.
 */
export async function readPairs(plan: ModuleHolders, from: number, to: number, arena?: Float32Array): Promise<NativeModulePair[]> {
  const holders = plan.holders.slice(from, to);
  const pairs: NativeModulePair[] = new Array(holders.length);
  const at: number[] = [];
  const toRead: number[] = [];
  let offset = 0;
  holders.forEach((h, i) => {
    const files = h.adapter.locate(plan.name);
    if (files !== null) {
      pairs[i] = { ...files, scale: h.info.scale };
      return;
    }
    toRead.push(i);
    at[i] = offset;
    offset += arenaFloats(plan.name, h);
  });
  if (arena !== undefined && arena.length < offset) throw new EigenLoraxError(`internal: an arena of ${arena.length} floats for ${offset}`, 'ERR_INTERNAL');
  await runPool(toRead, 16, async (i) => {
    const h = holders[i]!;
    const a = at[i]!;
    const { rank, inFeatures, outFeatures } = h.info;
    const into = arena === undefined || h.adapter.kind === 'loaded' ? undefined : { A: arena.subarray(a, a + rank * inFeatures), B: arena.subarray(a + rank * inFeatures, a + rank * (inFeatures + outFeatures)) };
    const f = await h.adapter.read(plan.name, into);
    pairs[i] = { A: f.A, B: f.B, scale: h.info.scale };
  });
  return pairs;
}

/**
 * Float32 memory reused from module to module: reading every module's factors into fresh
 * arrays costs page faults and collections several times the read itself (256 adapters x 8
 * modules of 4096 x 16 bf16: 1.7 s fresh against 0.5 s into reused memory). Each module in
 * flight holds one arena while its pairs are in use (the native calls copy their inputs
 * when called); an arena goes back to the pool only when its module succeeded, so a read
 * still in flight after a failure can never write into another module's pairs.
 */
export class FactorArenas {
  #free: Float32Array[] = [];

  async with<T>(floats: number, body: (arena: Float32Array | undefined) => Promise<T>): Promise<T> {
    if (floats === 0) return body(undefined);
    const i = this.#free.findIndex((a) => a.length >= floats);
    if (i < 0) this.#free.pop(); // too small for this module: replaced, so the pool never holds more arenas than modules in flight
    const arena = i >= 0 ? this.#free.splice(i, 1)[0]! : new Float32Array(floats);
    const result = await body(arena);
    this.#free.push(arena);
    return result;
  }
}

/**
 * Calls `body` on consecutive chunks of `chunk` holders, in order; the next chunk is read
 * while `body` runs on the current one, so reading overlaps compute.
 */
export async function forEachChunk(
  plan: ModuleHolders,
  chunk: number,
  readClock: Clock,
  body: (pairs: NativeModulePair[], offset: number) => Promise<void>,
): Promise<void> {
  const n = plan.holders.length;
  const read = (from: number) => {
    const p = readClock.time(() => readPairs(plan, from, Math.min(n, from + chunk)));
    p.catch(() => undefined); // awaited below; a failure of `body` comes first
    return p;
  };
  let next: Promise<NativeModulePair[]> | null = read(0);
  for (let from = 0; from < n; from += chunk) {
    const pairs: NativeModulePair[] = await next!;
    next = from + chunk < n ? read(from + chunk) : null;
    await body(pairs, from);
  }
}

export interface StreamBuildArgs {
  dIn: number;
  dOut: number;
  stacking: NativeStacking;
  weighting: NativeWeighting;
  center: boolean;
  oversample: number;
  powerIters: number;
  seed: number;
  componentsA: Matrix;
  componentsB: Matrix;
  singularA: Float32Array;
  singularB: Float32Array;
  meanA: Float32Array | null;
  meanB: Float32Array | null;
}

/**
 * The components of one module, out of core: the same result as
 * the in-memory buildModuleSubspace within float32 rounding. Errors name adapters by their
 * index among the holders, as the in-memory build does.
 */
export async function streamModuleComponents(
  plan: ModuleHolders,
  args: StreamBuildArgs,
  chunk: number,
  clocks: { read: Clock; native: Clock },
): Promise<{ energyA: number; energyB: number; norms: Float64Array }> {
  const totalRank = plan.holders.reduce((n, h) => n + h.info.rank, 0);
  const { stream, passes } = ops.createModuleStream({
    dIn: args.dIn,
    dOut: args.dOut,
    totalRank,
    adapters: plan.holders.length,
    kA: args.componentsA.cols,
    kB: args.componentsB.cols,
    stacking: args.stacking,
    weighting: args.weighting,
    center: args.center,
    oversample: args.oversample,
    powerIters: args.powerIters,
    seed: args.seed,
  });
  for (let pass = 0; pass < passes; pass++) {
    await forEachChunk(plan, chunk, clocks.read, (adapters) =>
      clocks.native.time(() => ops.moduleStreamAdd({ stream, adapters })),
    );
    await clocks.native.time(() => ops.moduleStreamEndPass({ stream }));
  }
  return clocks.native.time(() =>
    ops.moduleStreamFinish({
      stream,
      componentsA: args.componentsA,
      componentsB: args.componentsB,
      singularA: args.singularA,
      singularB: args.singularB,
      meanA: args.meanA,
      meanB: args.meanB,
    }),
  );
}

/** A native error about `adapters[i]` of a chunk, renamed to the index among all holders. */
function renumbered(error: unknown, offset: number): unknown {
  if (error instanceof Error && offset > 0) {
    const before = error.message;
    error.message = before.replace(/adapters\[(\d+)\]/g, (_, i: string) => `adapters[${Number(i) + offset}]`);
    if (error.stack?.includes(before)) error.stack = error.stack.replace(before, error.message);
  }
  return error;
}

/** Loadings, norms and errors of every holder, projected chunk by chunk (read once more). */
export async function streamProjections(
  plan: ModuleHolders,
  module: SubspaceModule,
  stacking: Stacking,
  chunk: number,
  clocks: { read: Clock; native: Clock },
): Promise<Array<{ alpha: Matrix; beta: Matrix; norm: number; error: number }>> {
  const out: Array<{ alpha: Matrix; beta: Matrix; norm: number; error: number }> = new Array(plan.holders.length);
  await forEachChunk(plan, chunk, clocks.read, async (pairs, offset) => {
    const { alphas, betas, norms, errors } = await clocks.native
      .time(() => projectPairs(module, stacking, pairs))
      .catch((error: unknown) => {
        throw renumbered(error, offset);
      });
    pairs.forEach((_, i) => (out[offset + i] = { alpha: alphas[i]!, beta: betas[i]!, norm: norms[i]!, error: errors[i]! }));
  });
  return out;
}
