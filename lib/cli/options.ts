/**
 * Flag values for the `eigenlorax` commands: one parser per kind of value (integer,
 * number, choice, size), each usable as a commander `argParser` and each failing with a
 * {@link UsageError} that says what the flag expects and what it received.
 */

import { parseSize } from '../subspace/budget.js';

/** A mistake in how a command was called: printed with the command's usage, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** `flag expects <what>, not "<text>"`. */
function expected(flag: string, what: string, text: string): UsageError {
  return new UsageError(`${flag} expects ${what}, not ${JSON.stringify(text)}`);
}

export interface IntegerRange {
  min: number;
  /** Inclusive; default no bound. */
  max?: number;
}

/** Parses a whole decimal number (an optional `+`, digits) within `range`. */
export function parseInteger(flag: string, text: string, range: IntegerRange): number {
  const s = text.trim();
  const value = /^[+]?\d+$/.test(s) ? Number(s) : Number.NaN;
  const max = range.max ?? Number.MAX_SAFE_INTEGER;
  if (!Number.isSafeInteger(value) || value < range.min || value > max) {
    throw expected(flag, range.max === undefined ? `an integer >= ${range.min}` : `an integer from ${range.min} to ${range.max}`, text);
  }
  return value;
}

export interface NumberRange {
  /** What the value is, for the message (default "a number"; "a finite number" without bounds). */
  noun?: string;
  /** Inclusive lower bound. */
  min?: number;
  /** Exclusive lower bound. */
  above?: number;
  /** Inclusive upper bound. */
  max?: number;
}

/** Parses a finite decimal number within `range`. */
export function parseNumber(flag: string, text: string, range: NumberRange = {}): number {
  const value = text.trim() === '' ? Number.NaN : Number(text);
  const { min, above, max } = range;
  const ok = Number.isFinite(value) && (min === undefined || value >= min) && (above === undefined || value > above) && (max === undefined || value <= max);
  if (!ok) {
    let bounds = '';
    if (above !== undefined && max !== undefined) bounds = ` in (${above}, ${max}]`;
    else if (min !== undefined && max !== undefined) bounds = ` from ${min} to ${max}`;
    else if (min !== undefined) bounds = ` >= ${min}`;
    else if (above !== undefined) bounds = ` > ${above}`;
    else if (max !== undefined) bounds = ` <= ${max}`;
    throw expected(flag, `${range.noun ?? (bounds === '' ? 'a finite number' : 'a number')}${bounds}`, text);
  }
  return value;
}

/** One of `choices` (compared as given, or upper-cased first with `upper`). */
export function parseChoice<T extends string>(flag: string, text: string, choices: readonly T[], upper = false): T {
  const value = upper ? text.toUpperCase() : text;
  if (!(choices as readonly string[]).includes(value)) throw new UsageError(`${flag} must be one of ${choices.join(', ')}, not ${JSON.stringify(text)}`);
  return value as T;
}

// commander argParser forms: `.argParser(integer('--port', { min: 0, max: 65535 }))`.

export const integer = (flag: string, range: IntegerRange) => (text: string) => parseInteger(flag, text, range);
export const number = (flag: string, range?: NumberRange) => (text: string) => parseNumber(flag, text, range);
export const choice =
  <T extends string>(flag: string, choices: readonly T[], upper = false) =>
  (text: string): T =>
    parseChoice(flag, text, choices, upper);

/** Bytes, as 512MB, 4GB, 1.5GiB or a plain number (0 only with `zero`). */
export const size = (flag: string, zero = false) => (text: string) => {
  if (zero && /^\s*0+\s*[a-z]*\s*$/i.test(text)) return 0;
  try {
    return parseSize(text, flag);
  } catch {
    throw expected(flag, 'a size such as 512MB, 4GB or 1.5GiB (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB) or bytes', text);
  }
};

/** A non-empty string (commander accepts `--host ''`). */
export const nonEmpty = (flag: string, what: string) => (text: string) => {
  if (text.length === 0) throw new UsageError(`${flag} expects ${what}`);
  return text;
};
