/** The demo's targets (the claims), met or not, with the numbers. */
import { median } from './training.js';
import type { DemoResults, HeldOutResult, MethodId, MethodResult, TargetResult } from './types.js';

const pct = (v: number) => `${(100 * v).toFixed(2)}%`;

/** The targets, met or not, with the numbers. */
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
