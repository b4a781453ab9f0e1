/**
 * The explained-variance chart of an analysis as a standalone SVG: explained variance
 * (0 to 1) against K, per side the mean over modules as a line and the min..max over
 * modules as a band, a dashed line at the analysis' K, axes with ticks and labels, a
 * legend. No scripts, no external fonts or files (generic `sans-serif`).
 */
import path from 'node:path';
import { escapeXml, fmt as num, niceStep, svgHead } from '../chart/svg.js';
import { writeFileAtomic } from '../io/files.js';
import { invalid, knownKeys, object } from '../validate.js';
import type { CurveBand, SubspaceAnalysis } from './analyze.js';

export interface ExplainedVarianceSvgOptions {
  /** Pixels (default 720 x 440). */
  width?: number;
  height?: number;
  /** The title (default: "Explained variance against K"). */
  title?: string;
}

const COLORS = { A: '#1f6fb4', B: '#c8392b' } as const;

/** Tick values for the K axis: 1 and multiples of a 1-2-5 step, about `target` of them. */
function kTicks(max: number, target = 8): number[] {
  if (max <= 1) return [1];
  const step = Math.max(1, niceStep(max / target));
  const ticks = [1];
  for (let v = Math.max(step, Math.ceil(2 / step) * step); v <= max; v += step) if (v > 1) ticks.push(Math.round(v));
  return [...new Set(ticks)];
}

function settingsText(a: SubspaceAnalysis): string {
  const s = a.settings;
  const stacking = s.stacking === 'raw' ? 'raw' : `canonical + ${s.weighting}`;
  const k =
    s.components !== null
      ? s.components.A === s.components.B
        ? `K = ${s.components.A}`
        : `K_A = ${s.components.A}, K_B = ${s.components.B}`
      : `variance ${s.variance}`;
  return `${a.adapters.length} adapters, ${a.modules.length} module${a.modules.length === 1 ? '' : 's'}, ${stacking}${s.center ? ', centred' : ''}, ${k}`;
}

/**
 * The chart as SVG text. One `<polyline class="series">` per side (A: the adapters' A
 * factors, over d_in; B: the B factors, over d_out), one `<polygon class="band">` per side.
 */
export function explainedVarianceSvg(analysis: SubspaceAnalysis, options: ExplainedVarianceSvgOptions = {}): string {
  const a = object(analysis, 'analysis') as unknown as SubspaceAnalysis;
  if (typeof a.curve !== 'object' || a.curve === null || !Array.isArray(a.curve.A?.mean) || !Array.isArray(a.curve.B?.mean)) {
    throw invalid('an analysis from analyzeAdapters', 'analysis', analysis);
  }
  const o = object(options, 'options');
  knownKeys(o, 'options', ['width', 'height', 'title']);
  const width = o.width === undefined ? 720 : Number(o.width);
  const height = o.height === undefined ? 440 : Number(o.height);
  if (!(Number.isFinite(width) && width >= 240 && width <= 10_000)) throw invalid('a width in pixels from 240 to 10000', 'options.width', o.width);
  if (!(Number.isFinite(height) && height >= 200 && height <= 10_000)) throw invalid('a height in pixels from 200 to 10000', 'options.height', o.height);
  if (o.title !== undefined && typeof o.title !== 'string') throw invalid('a string', 'options.title', o.title);
  const title = (o.title as string | undefined) ?? 'Explained variance against K';

  const margin = { left: 64, right: 24, top: 58, bottom: 110 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const maxK = Math.max(2, a.curve.A.mean.length, a.curve.B.mean.length);
  const x = (k: number) => margin.left + ((k - 1) / (maxK - 1)) * plotW;
  const y = (v: number) => margin.top + (1 - Math.max(0, Math.min(1, v))) * plotH;

  const out = svgHead(width, height, `${title}: ${settingsText(a)}`);
  out.push(`<text x="${margin.left}" y="22" font-size="15" font-weight="bold">${escapeXml(title)}</text>`);
  out.push(`<text x="${margin.left}" y="40" fill="#444444">${escapeXml(settingsText(a))}</text>`);

  // Grid and axes.
  out.push('<g class="grid" stroke="#e4e4e4" stroke-width="1">');
  for (let t = 0; t <= 10; t += 2) out.push(`<line x1="${margin.left}" y1="${num(y(t / 10))}" x2="${margin.left + plotW}" y2="${num(y(t / 10))}"/>`);
  const ticks = kTicks(maxK);
  for (const k of ticks) out.push(`<line x1="${num(x(k))}" y1="${margin.top}" x2="${num(x(k))}" y2="${margin.top + plotH}"/>`);
  out.push('</g>');
  out.push('<g class="axes" stroke="#333333" stroke-width="1">');
  out.push(`<line x1="${margin.left}" y1="${margin.top + plotH}" x2="${margin.left + plotW}" y2="${margin.top + plotH}"/>`);
  out.push(`<line x1="${margin.left}" y1="${margin.top}" x2="${margin.left}" y2="${margin.top + plotH}"/>`);
  for (let t = 0; t <= 10; t += 2) out.push(`<line x1="${margin.left - 5}" y1="${num(y(t / 10))}" x2="${margin.left}" y2="${num(y(t / 10))}"/>`);
  for (const k of ticks) out.push(`<line x1="${num(x(k))}" y1="${margin.top + plotH}" x2="${num(x(k))}" y2="${margin.top + plotH + 5}"/>`);
  out.push('</g>');
  out.push('<g class="tick-labels" fill="#333333">');
  for (let t = 0; t <= 10; t += 2) {
    out.push(`<text x="${margin.left - 8}" y="${num(y(t / 10) + 4)}" text-anchor="end">${(t / 10).toFixed(1)}</text>`);
  }
  for (const k of ticks) out.push(`<text x="${num(x(k))}" y="${margin.top + plotH + 19}" text-anchor="middle">${k}</text>`);
  out.push('</g>');
  out.push(
    `<text class="axis-label" x="${num(margin.left + plotW / 2)}" y="${margin.top + plotH + 38}" text-anchor="middle">K (components per side)</text>`,
  );
  out.push(
    `<text class="axis-label" transform="translate(16 ${num(margin.top + plotH / 2)}) rotate(-90)" text-anchor="middle">explained variance</text>`,
  );

  // K marker.
  const s = a.settings;
  const kMarks = s.components === null ? [] : s.components.A === s.components.B ? [s.components.A] : [s.components.A, s.components.B];
  for (const k of kMarks) {
    if (k < 1 || k > maxK) continue;
    out.push(
      `<line class="k-marker" x1="${num(x(k))}" y1="${margin.top}" x2="${num(x(k))}" y2="${margin.top + plotH}" stroke="#777777" stroke-width="1" stroke-dasharray="5 4"/>`,
    );
  }

  // Bands, then lines on top.
  const sides = [
    { side: 'A' as const, band: a.curve.A, label: 'A side (span of the A factors, d_in)' },
    { side: 'B' as const, band: a.curve.B, label: 'B side (span of the B factors, d_out)' },
  ];
  for (const { side, band } of sides) {
    if (band.mean.length === 0) continue;
    out.push(`<polygon class="band" data-side="${side}" points="${bandPoints(band, x, y)}" fill="${COLORS[side]}" fill-opacity="0.15" stroke="none"/>`);
  }
  for (const { side, band } of sides) {
    if (band.mean.length === 0) continue;
    const points = band.mean.map((v, i) => `${num(x(i + 1))},${num(y(v))}`).join(' ');
    out.push(`<polyline class="series" data-side="${side}" points="${points}" fill="none" stroke="${COLORS[side]}" stroke-width="2"/>`);
  }

  // Legend, under the plot.
  const ly = margin.top + plotH + 56;
  const lx = margin.left;
  const modules = a.modules.length;
  out.push('<g class="legend">');
  sides.forEach(({ side, label }, i) => {
    const yy = ly + i * 18;
    out.push(`<rect x="${lx}" y="${yy - 9}" width="22" height="10" fill="${COLORS[side]}" fill-opacity="0.15"/>`);
    out.push(`<line x1="${lx}" y1="${yy - 4}" x2="${lx + 22}" y2="${yy - 4}" stroke="${COLORS[side]}" stroke-width="2"/>`);
    out.push(`<text x="${lx + 30}" y="${yy}">${escapeXml(`${label}: mean over ${modules} module${modules === 1 ? '' : 's'}, band min to max`)}</text>`);
  });
  if (kMarks.length > 0) {
    const ky = ly + 36;
    out.push(`<line x1="${lx}" y1="${ky - 4}" x2="${lx + 22}" y2="${ky - 4}" stroke="#777777" stroke-dasharray="5 4"/>`);
    out.push(`<text x="${lx + 30}" y="${ky}">${escapeXml(kMarks.length === 1 ? `K = ${kMarks[0]}` : `K_A = ${kMarks[0]}, K_B = ${kMarks[1]}`)}</text>`);
  }
  out.push('</g>');
  out.push('</svg>');
  return `<?xml version="1.0" encoding="UTF-8"?>\n${out.join('\n')}\n`;
}

function bandPoints(band: CurveBand, x: (k: number) => number, y: (v: number) => number): string {
  const upper = band.max.map((v, i) => `${num(x(i + 1))},${num(y(v))}`);
  const lower = band.min.map((v, i) => `${num(x(i + 1))},${num(y(v))}`).reverse();
  return [...upper, ...lower].join(' ');
}

/** Writes {@link explainedVarianceSvg} to `file`, atomically (a temporary file in the same folder, renamed). */
export async function writeExplainedVarianceSvg(analysis: SubspaceAnalysis, file: string, options: ExplainedVarianceSvgOptions = {}): Promise<{ file: string }> {
  if (typeof file !== 'string' || file.length === 0) throw invalid('a file path (non-empty string)', 'file', file);
  const text = explainedVarianceSvg(analysis, options);
  await writeFileAtomic(file, text);
  return { file: path.resolve(file) };
}
