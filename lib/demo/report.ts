/**
 * The demo's outputs: the comparison table as plain text (for the terminal) and as
 * markdown, the results folder (results.json, results.md, SVG curves per held-out task).
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../io/files.js';
import type { DemoResults, MethodId, MethodResult } from './types.js';
import { lineChartSvg, type LineSeries } from '../chart/svg.js';

const COLORS: Record<MethodId, string> = { lora: '#1f6fb4', eigenlora: '#c8392b', eigenlorax: '#2e8b3d', base: '#777777' };

const pct = (v: number) => `${(100 * v).toFixed(2)}%`;
const int = (v: number) => v.toLocaleString('en-US');
const secs = (v: number) => v.toFixed(1);

type Row = string[];

function textTable(header: Row, rows: Row[], right: boolean[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: Row) => cells.map((c, i) => (right[i] ? c.padStart(widths[i] as number) : c.padEnd(widths[i] as number))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

function markdownTable(header: Row, rows: Row[], right: boolean[]): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  return [
    `| ${header.map(esc).join(' | ')} |`,
    `|${right.map((r) => (r ? '---:' : '---')).join('|')}|`,
    ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`),
  ].join('\n');
}

function comparisonRows(r: DemoResults): { header: Row; rows: Row[]; right: boolean[] } {
  const header = ['held-out task', 'range', 'method', 'trainable', 'accuracy', 'steps to 95%', 'train s', 'ms/step', 'lr'];
  const right = [false, false, false, true, true, true, true, true, true];
  const rows: Row[] = [];
  for (const t of r.heldOut) {
    t.methods.forEach((m: MethodResult, i) => {
      const trained = m.method !== 'base';
      rows.push([
        i === 0 ? t.name : '',
        i === 0 ? t.range : '',
        m.label,
        int(m.trainable),
        m.repeats > 1 ? `${pct(m.accuracy)} ± ${(100 * m.accuracySd).toFixed(2)}` : pct(m.accuracy),
        trained && m.stepsTo95 !== null ? `${m.stepsTo95}/${m.steps}` : '-',
        trained ? secs(m.trainSeconds) : '-',
        trained ? m.msPerStep.toFixed(2) : '-',
        m.lr === null ? '-' : String(m.lr),
      ]);
    });
  }
  return { header, rows, right };
}

function zooRows(r: DemoResults): { header: Row; rows: Row[]; right: boolean[] } {
  const header = ['zoo task', 'LoRA', 'rebuilt from coefficients', 'base', 'accuracy kept', 'gain kept', 'dW rel. error', 'coefficients / LoRA params'];
  const right = [false, true, true, true, true, true, true, true];
  const rows = r.zeroShot.map((z) => [
    z.task,
    pct(z.original),
    pct(z.reconstructed),
    pct(z.base),
    pct(z.kept),
    pct(z.gainKept),
    z.relativeError.toFixed(3),
    `${int(z.coefficients)} / ${int(z.loraParameters)}`,
  ]);
  return { header, rows, right };
}

function subspaceLine(r: DemoResults): string {
  const mods = r.subspace.modules
    .map((m) => `${m.module} (${m.dIn}->${m.dOut}): K_A ${m.kA} explains ${pct(m.explainedA)}, K_B ${m.kB} explains ${pct(m.explainedB)}`)
    .join('; ');
  return `subspace of ${r.zoo.length} zoo adapters (${r.subspace.stacking}${r.subspace.weighting ? ` + ${r.subspace.weighting}` : ''}, K = ${r.subspace.components} per side): ${mods}; in-sample dW error ${pct(r.subspace.inSampleError)}`;
}

function timingLine(r: DemoResults): string {
  const t = r.timings;
  return (
    `wall time ${secs(t.totalSeconds)} s: data ${secs(t.dataSeconds)}, base ${secs(t.baseSeconds)} (${r.base.cached ? 'cached' : 'trained'}), ` +
    `zoo ${secs(t.zooSeconds)} (${r.cache.zooTrained} trained, ${r.cache.zooLoaded} from the cache), subspace ${t.subspaceSeconds.toFixed(2)}, ` +
    `held-out ${secs(t.heldOutSeconds)}, zero-shot ${secs(t.zeroShotSeconds)}; ${r.machine.cpus} CPUs, ${r.machine.threads} kernel threads`
  );
}

/** What `eigenlorax demo` prints. */
export function formatDemoText(r: DemoResults): string {
  const c = comparisonRows(r);
  const z = zooRows(r);
  const lines = [
    `eigenlorax demo${r.quick ? ' --quick' : ''} (seed ${r.seed}): Fashion-MNIST, base MLP ${r.base.layers.join('-')} ${r.base.activation.toUpperCase()} at ${pct(r.base.accuracy)} on the upright test images`,
    subspaceLine(r),
    '',
    textTable(c.header, c.rows, c.right),
    '',
    textTable(z.header, z.rows, z.right),
    '',
    ...r.targets.map((t) => `target ${t.met ? 'MET    ' : 'NOT MET'} ${t.description}\n               ${t.detail}`),
    '',
    timingLine(r),
    `results: ${r.out} (${r.files.join(', ')})`,
    `serve:   eigenlorax serve ${r.serve}   (the base model with the ${r.zoo.length} zoo adapters, rebuilt from their coefficients, over HTTP)`,
  ];
  return `${lines.join('\n')}\n`;
}

/** results.md. */
export function formatDemoMarkdown(r: DemoResults): string {
  const c = comparisonRows(r);
  const z = zooRows(r);
  const h = r.settings.heldOut;
  const plots = r.heldOut.map((t) => `- ${t.name}: ![accuracy](${t.name}-accuracy.svg) ![loss](${t.name}-loss.svg)`).join('\n');
  return `# eigenlorax demo${r.quick ? ' (quick)' : ''}

Fashion-MNIST, seed ${r.seed}, eigenlorax ${r.version}. Base MLP ${r.base.layers.join('-')} ${r.base.activation.toUpperCase()}
(${int(r.base.parameters)} parameters), ${pct(r.base.accuracy)} on the upright test images.
Zoo: ${r.zoo.length} LoRA adapters (r = ${r.settings.zoo.rank}), one per task: ${r.zoo.map((t) => t.name).join(', ')}.

${subspaceLine(r)}.

## Held-out tasks

Same budget for (a)-(c): ${h.epochs} epoch(s) over ${int(h.trainSize)} training images, batch ${h.batchSize},
AdamW (no weight decay) with a 10% warm-up and cosine decay, each method with its own learning rate (column lr).
Accuracy on ${int(h.evalSize)} test images of the task${h.repeats > 1 ? `, mean ± standard deviation over ${h.repeats} runs (seeds of initialisation and shuffling)` : ''};
curves on the first ${int(h.curveSize)} of them, every ${h.evalEvery} updates${h.repeats > 1 ? ' (mean of the runs)' : ''};
"steps to 95%" is the first evaluated update at which the curve reached 95% of its final accuracy;
"train s" is the wall time of the updates (curve evaluations excluded).

${markdownTable(c.header, c.rows, c.right)}

${plots}

## Zero-shot: zoo adapters rebuilt from their coefficients

${markdownTable(z.header, z.rows, z.right)}

## Targets

${r.targets.map((t) => `- **${t.met ? 'met' : 'not met'}**: ${t.description}. ${t.detail}.`).join('\n')}

${timingLine(r)}.
`;
}

function charts(r: DemoResults, task: DemoResults['heldOut'][number]): { accuracy: string; loss: string } {
  const series = (metric: 'accuracy' | 'loss'): LineSeries[] =>
    task.methods.map((m) => ({
      name: m.label,
      color: COLORS[m.method],
      dashed: m.method === 'base',
      points: m.curve.map((p) => [p.step, metric === 'accuracy' ? p.accuracy * 100 : p.loss] as const),
    }));
  const what = `${task.name} (held out, ${task.range === 'in' ? 'inside' : 'outside'} the zoo's range)`;
  return {
    accuracy: lineChartSvg({ title: `Test accuracy on ${what}`, xLabel: 'update', yLabel: 'accuracy (%)', series: series('accuracy') }),
    loss: lineChartSvg({ title: `Test loss on ${what}`, xLabel: 'update', yLabel: 'cross-entropy', series: series('loss') }),
  };
}

/** Writes results.json, results.md and the SVG curves into `out`; returns the file names. */
export async function writeDemoFiles(r: DemoResults, out: string): Promise<string[]> {
  await mkdir(out, { recursive: true });
  const files: string[] = ['results.json', 'results.md'];
  for (const t of r.heldOut) {
    const c = charts(r, t);
    await writeFileAtomic(path.join(out, `${t.name}-accuracy.svg`), c.accuracy);
    await writeFileAtomic(path.join(out, `${t.name}-loss.svg`), c.loss);
    files.push(`${t.name}-accuracy.svg`, `${t.name}-loss.svg`);
  }
  r.files = files;
  await writeFileAtomic(path.join(out, 'results.md'), formatDemoMarkdown(r));
  await writeFileAtomic(path.join(out, 'results.json'), `${JSON.stringify(r, null, 2)}\n`);
  return files;
}
