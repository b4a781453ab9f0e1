/**
 * Standalone SVG charts: the parts every chart shares (the document's head, XML escaping,
 * coordinates to two decimals, 1-2-5 tick steps) and a line chart of several (x, y)
 * series (the demo's training curves). No scripts, no external fonts or files (generic
 * `sans-serif`); every text is XML-escaped, so the output is well-formed XML.
 */

export interface LineSeries {
  /** Legend text. */
  name: string;
  /** A CSS colour. */
  color: string;
  points: ReadonlyArray<readonly [number, number]>;
  /** Dashed line (e.g. a constant reference such as the base model). */
  dashed?: boolean;
}

export interface LineChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: readonly LineSeries[];
  /** Fixed y range; default: the data's range with a margin. */
  yRange?: readonly [number, number];
  /** Pixels (default 720 x 420). */
  width?: number;
  height?: number;
}

export function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

/** A coordinate in the SVG text: rounded to two decimals, no trailing zeros. */
export const fmt = (v: number) => (Math.round(v * 100) / 100).toString();

/** The smallest step of 1, 2 or 5 times a power of ten that is at least `raw`. */
export function niceStep(raw: number): number {
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? 10 * magnitude;
}

/**
 * The first lines of a chart: the `<svg>` element (size, viewBox, font), its `<title>`
 * (what screen readers announce) and a white background.
 */
export function svgHead(width: number, height: number, title: string): string[] {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
      `font-family="sans-serif" font-size="12" role="img" aria-labelledby="title">`,
    `<title id="title">${escapeXml(title)}</title>`,
    `<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`,
  ];
}

/** About `target` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten). */
export function niceTicks(lo: number, hi: number, target = 6): number[] {
  if (!(hi > lo)) return [lo];
  const step = niceStep((hi - lo) / target);
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function tickText(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1000) return Math.round(v).toString();
  return Number(v.toPrecision(4)).toString();
}

/** The chart as SVG text: one `<polyline class="series">` per series with at least two points. */
export function lineChartSvg(options: LineChartOptions): string {
  const width = options.width ?? 720;
  const height = options.height ?? 420;
  const series = options.series.filter((s) => s.points.length > 0);
  const xs = series.flatMap((s) => s.points.map((p) => p[0])).filter(Number.isFinite);
  const ys = series.flatMap((s) => s.points.map((p) => p[1])).filter(Number.isFinite);
  let xMin = xs.length > 0 ? Math.min(...xs) : 0;
  let xMax = xs.length > 0 ? Math.max(...xs) : 1;
  if (!(xMax > xMin)) xMax = xMin + 1;
  let [yMin, yMax] = options.yRange ?? [ys.length > 0 ? Math.min(...ys) : 0, ys.length > 0 ? Math.max(...ys) : 1];
  if (options.yRange === undefined) {
    const pad = (yMax - yMin) * 0.06 || Math.abs(yMax) * 0.1 || 0.1;
    yMin -= pad;
    yMax += pad;
  }
  if (!(yMax > yMin)) yMax = yMin + 1;
  if (xMin > 0 && xMin < (xMax - xMin) * 0.2) xMin = 0;

  const legendRows = Math.ceil(series.length / 2);
  const margin = { left: 70, right: 24, top: 50, bottom: 62 + 20 * legendRows };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const x = (v: number) => margin.left + ((v - xMin) / (xMax - xMin)) * plotW;
  const y = (v: number) => margin.top + (1 - (Math.max(yMin, Math.min(yMax, v)) - yMin) / (yMax - yMin)) * plotH;

  const out = svgHead(width, height, options.title);
  out.push(`<text x="${width / 2}" y="26" text-anchor="middle" font-size="15" font-weight="bold">${escapeXml(options.title)}</text>`);
  // grid and ticks
  for (const t of niceTicks(yMin, yMax)) {
    if (t < yMin || t > yMax) continue;
    out.push(`<line class="grid" x1="${fmt(margin.left)}" y1="${fmt(y(t))}" x2="${fmt(margin.left + plotW)}" y2="${fmt(y(t))}" stroke="#e3e3e3"/>`);
    out.push(`<text x="${fmt(margin.left - 6)}" y="${fmt(y(t) + 4)}" text-anchor="end">${escapeXml(tickText(t))}</text>`);
  }
  for (const t of niceTicks(xMin, xMax)) {
    if (t < xMin || t > xMax) continue;
    out.push(`<line x1="${fmt(x(t))}" y1="${fmt(margin.top + plotH)}" x2="${fmt(x(t))}" y2="${fmt(margin.top + plotH + 5)}" stroke="#333333"/>`);
    out.push(`<text x="${fmt(x(t))}" y="${fmt(margin.top + plotH + 18)}" text-anchor="middle">${escapeXml(tickText(t))}</text>`);
  }
  out.push(`<rect x="${margin.left}" y="${margin.top}" width="${fmt(plotW)}" height="${fmt(plotH)}" fill="none" stroke="#333333"/>`);
  out.push(`<text x="${fmt(margin.left + plotW / 2)}" y="${fmt(margin.top + plotH + 38)}" text-anchor="middle">${escapeXml(options.xLabel)}</text>`);
  out.push(
    `<text x="18" y="${fmt(margin.top + plotH / 2)}" text-anchor="middle" transform="rotate(-90 18 ${fmt(margin.top + plotH / 2)})">${escapeXml(options.yLabel)}</text>`,
  );
  // series
  for (const s of series) {
    const pts = s.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    if (pts.length === 0) continue;
    const dash = s.dashed === true ? ' stroke-dasharray="6 4"' : '';
    if (pts.length === 1) {
      const [p] = pts as [readonly [number, number]];
      out.push(`<circle class="series" cx="${fmt(x(p[0]))}" cy="${fmt(y(p[1]))}" r="3" fill="${escapeXml(s.color)}"><title>${escapeXml(s.name)}</title></circle>`);
      continue;
    }
    const d = pts.map((p) => `${fmt(x(p[0]))},${fmt(y(p[1]))}`).join(' ');
    out.push(
      `<polyline class="series" fill="none" stroke="${escapeXml(s.color)}" stroke-width="2"${dash} points="${d}"><title>${escapeXml(s.name)}</title></polyline>`,
    );
  }
  // legend, two columns
  series.forEach((s, i) => {
    const col = i % 2;
    const row = Math.floor(i / 2);
    const lx = margin.left + col * (plotW / 2);
    const ly = margin.top + plotH + 56 + row * 20;
    const dash = s.dashed === true ? ' stroke-dasharray="6 4"' : '';
    out.push(`<line x1="${fmt(lx)}" y1="${fmt(ly - 4)}" x2="${fmt(lx + 26)}" y2="${fmt(ly - 4)}" stroke="${escapeXml(s.color)}" stroke-width="2"${dash}/>`);
    out.push(`<text x="${fmt(lx + 32)}" y="${fmt(ly)}">${escapeXml(s.name)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
