/**
 * Text output shared by the commands: key-value blocks, aligned tables, sizes, durations,
 * JSON on stdout, and file names from adapter names.
 */

/** Writes `value` as indented JSON and a newline on stdout. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Three decimals; '-' for a missing value. */
export const f3 = (x: number | null | undefined): string => (x === null || x === undefined ? '-' : Number.isFinite(x) ? x.toFixed(3) : String(x));

export function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

/** 1.23 kB, 45.6 MB: decimal units. */
export function bytesText(n: number): string {
  if (n < 1e3) return `${n} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let value = n / 1e3;
  let unit = 0;
  while (value >= 1e3 && unit < units.length - 1) {
    value /= 1e3;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

export const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;

/** Unique values with their counts, most common first: "16 (12), 8 (2)". */
export function counted(values: number[]): { text: string; values: Array<{ value: number; count: number }> } {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  const list = [...counts].map(([value, count]) => ({ value, count })).sort((a, b) => b.count - a.count || a.value - b.value);
  return { text: list.map((c) => `${c.value} (${c.count})`).join(', '), values: list };
}

export function stats(values: number[]): { mean: number; min: number; max: number } {
  return { mean: values.reduce((a, b) => a + b, 0) / Math.max(1, values.length), min: Math.min(...values), max: Math.max(...values) };
}

/** Key-value lines, keys padded. Long values wrap under their start. */
export function keyValues(lines: Array<[string, string]>, keyWidth = 16, columns = 100): string {
  const out: string[] = [];
  for (const [key, value] of lines) {
    const indent = ' '.repeat(2 + keyWidth + 1);
    const wrapped = wrap(value, Math.max(40, columns - indent.length));
    wrapped.forEach((line, i) => out.push(i === 0 ? `  ${key.padEnd(keyWidth)} ${line}` : `${indent}${line}`));
  }
  return `${out.join('\n')}\n`;
}

/** Key-value lines without wrapping (inspect, merge). */
export function keyLines(lines: Array<[string, string]>, keyWidth: number): string {
  return `${lines.map(([k, v]) => `  ${k.padEnd(keyWidth)} ${v}`).join('\n')}\n`;
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line.length > 0 && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line.length === 0 ? word : `${line} ${word}`;
  }
  if (line.length > 0 || lines.length === 0) lines.push(line);
  return lines;
}

/** Aligned columns: numbers right-aligned, text left-aligned, two spaces between. */
export function columnsTable(header: string[], rows: string[][], indent = '  '): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const numeric = header.map((_, i) => rows.length > 0 && rows.every((r) => /^(-|[-+]?[\d.]+(e[-+]?\d+)?(x\d+)?( \([\d.]+\))?)$/.test(r[i] ?? '')));
  const line = (cells: string[]) =>
    indent + cells.map((c, i) => (numeric[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return `${[line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n')}\n`;
}

/** A file name from an adapter name: unsafe characters replaced, unique in `used`. */
export function fileNameFor(name: string, used: Set<string>): string {
  const base = name.replace(/[^A-Za-z0-9._#+-]/g, '_').replace(/^\.+/, '_') || 'adapter';
  let candidate = base;
  for (let k = 2; used.has(candidate.toLowerCase()); k++) candidate = `${base}#${k}`;
  used.add(candidate.toLowerCase());
  return `${candidate}.safetensors`;
}

/** Lines for the root help and `--help`: "Examples:" and indented command lines. */
export function examples(lines: Array<[string, string]>): string {
  return `\nExamples:\n${lines.map(([command, what]) => `  $ ${command}\n      ${what}`).join('\n')}\n`;
}
