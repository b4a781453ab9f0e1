/**
 * Splitting a build by module (DESIGN §5): which shard builds which module.
 */
import { naturalCompare } from '../adapters/common.js';
import { integer, invalid, knownKeys, object } from '../validate.js';

/** Shard `index` (0-based) of `count`. */
export interface ShardSpec {
  index: number;
  count: number;
}

/** Checks a shard option: `{ index, count }` with 0 <= index < count, or the string `'i/n'`. */
export function resolveShard(value: unknown, name = 'options.shard'): ShardSpec {
  if (typeof value === 'string') {
    const m = /^(\d+)\/(\d+)$/.exec(value.trim());
    if (m === null) throw invalid("'index/count' such as '0/4' (index from 0)", name, value);
    value = { index: Number(m[1]), count: Number(m[2]) };
  }
  const o = object(value, name);
  knownKeys(o, name, ['index', 'count']);
  const count = integer(o.count, `${name}.count`, 1, 1_000_000);
  const index = integer(o.index, `${name}.index`, 0, count - 1);
  return { index, count };
}

/**
 * The shard of every module: modules sorted by cost (largest first; ties in natural name
 * order), each given to the shard with the least cost so far (lowest index on ties). The
 * same modules and costs always give the same split, whichever shard computes it.
 * `cost`: the module's stack size, sum of ranks x (d_in + d_out).
 */
export function assignShards(modules: ReadonlyArray<{ name: string; cost: number }>, count: number): Map<string, number> {
  const order = [...modules].sort((a, b) => b.cost - a.cost || naturalCompare(a.name, b.name));
  const load = new Array<number>(count).fill(0);
  const out = new Map<string, number>();
  for (const m of order) {
    let best = 0;
    for (let s = 1; s < count; s++) if (load[s]! < load[best]!) best = s;
    load[best]! += m.cost;
    out.set(m.name, best);
  }
  return out;
}
