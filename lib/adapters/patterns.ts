/**
 * PEFT's `rank_pattern` / `alpha_pattern` matching, mirrored on a linear-time engine.
 *
 * PEFT (`peft.utils.other.get_pattern_key`) tries the pattern keys in insertion order and
 * takes the first `key` for which `re.match(rf"(.*\.)?({key})$", module_name)` matches:
 * the key is a regular expression (not escaped) that must match a whole trailing run of
 * dot-separated components of the module's full name (`transformer.h.0.attn.c_attn`
 * matches `c_attn`, `attn.c_attn`, `h\.\d+\.attn\.c_attn`, but not `attn` or `_attn`).
 * The module name is the one in the base model, i.e. without `base_model.model.`.
 *
 * The keys come from a file, so they are hostile until proven otherwise: a backtracking
 * engine (JavaScript's, Python's) takes exponential time on keys like `(.*)*(.*)*x`. Keys
 * run on RE2 (re2js, a pure-JavaScript port), whose time is linear in the name and the
 * key; the syntax PEFT keys use (`.`, `*`, `\d`, `[...]`, `|`, groups, `(?P<name>...)`)
 * is the same. What RE2 cannot run in linear time (backreferences, lookaround) is refused
 * with ERR_ADAPTER_CONFIG, never ignored. Keys that are plain names (letters, digits, `_`,
 * `-`, escaped punctuation, `.` as any character, an optional leading `^`) -- nearly all
 * real ones, one per module -- are matched without a regex in O(1) for most names.
 * Bounds: {@link MAX_PATTERN_KEYS} keys, {@link MAX_REGEX_KEYS} of them not plain, each at
 * most {@link MAX_PATTERN_KEY_LENGTH} characters, so that matching every module stays
 * within (modules x bounded work).
 */
import { RE2JS } from 're2js';
import { fieldError } from './common.js';

/** At most this many keys per pattern field (a module-per-key config of a large MoE fits). */
export const MAX_PATTERN_KEYS = 10_000;
/** At most this many keys per field that need the regex engine (not plain names). */
export const MAX_REGEX_KEYS = 256;
/** At most this many characters per key. */
export const MAX_PATTERN_KEY_LENGTH = 1_000;

/** A plain-name key: `anchored` (leading `^`) and its tokens, `null` standing for `.`. */
interface PlainKey {
  anchored: boolean;
  tokens: Array<string | null>;
}

interface Entry<T> {
  key: string;
  value: T;
  plain: PlainKey | null;
  regex: RE2JS | null;
}

export interface CompiledPatterns<T> {
  entries: Array<Entry<T>>;
}

/** Parses a key made only of literal characters and `.`; null for anything else. */
function plainKey(key: string): PlainKey | null {
  const anchored = key.startsWith('^');
  const tokens: Array<string | null> = [];
  for (let i = anchored ? 1 : 0; i < key.length; i++) {
    const c = key[i] as string;
    if (/[A-Za-z0-9_\-]/.test(c)) tokens.push(c);
    else if (c === '.') tokens.push(null);
    else if (c === '\\' && i + 1 < key.length && /[^A-Za-z0-9]/.test(key[i + 1] as string)) tokens.push(key[++i] as string);
    else return null;
  }
  return { anchored, tokens };
}

/** `(.*\.)?(key)$` for a plain key: the key fills the name from a component boundary to the end. */
function matchPlain(p: PlainKey, name: string): boolean {
  const start = name.length - p.tokens.length;
  if (start < 0 || (start > 0 && (p.anchored || name[start - 1] !== '.'))) return false;
  for (let i = 0; i < p.tokens.length; i++) {
    const t = p.tokens[i];
    const c = name[start + i] as string;
    if (t === null ? c === '\n' : t !== c) return false;
  }
  return true;
}

/** Compiles the keys of a `rank_pattern` / `alpha_pattern` object (insertion order kept). */
export function compilePatterns<T>(patterns: Record<string, T>, file: string, field: string): CompiledPatterns<T> {
  const keys = Object.keys(patterns);
  if (keys.length > MAX_PATTERN_KEYS) {
    throw fieldError('ERR_ADAPTER_CONFIG', file, field, `expected at most ${MAX_PATTERN_KEYS} keys but found ${keys.length}`);
  }
  const entries: Array<Entry<T>> = [];
  let regexKeys = 0;
  for (const key of keys) {
    const shown = key.length > 60 ? `${key.slice(0, 57)}...` : key;
    if (key.length > MAX_PATTERN_KEY_LENGTH) {
      throw fieldError('ERR_ADAPTER_CONFIG', file, `${field}.${shown}`, `expected a key of at most ${MAX_PATTERN_KEY_LENGTH} characters but found ${key.length}`);
    }
    const value = patterns[key] as T;
    const plain = plainKey(key);
    if (plain !== null) {
      entries.push({ key, value, plain, regex: null });
      continue;
    }
    if (++regexKeys > MAX_REGEX_KEYS) {
      throw fieldError(
        'ERR_ADAPTER_CONFIG',
        file,
        field,
        `expected at most ${MAX_REGEX_KEYS} keys that are regular expressions (not plain module names) but found more`,
      );
    }
    let regex: RE2JS;
    try {
      regex = RE2JS.compile(`(?:.*\\.)?(?:${key})`);
    } catch (cause) {
      throw fieldError(
        'ERR_ADAPTER_CONFIG',
        file,
        `${field}.${shown}`,
        `the key is not a regular expression that runs in linear time (RE2 syntax; no backreferences or lookaround): ${(cause as Error).message}`,
      );
    }
    entries.push({ key, value, plain: null, regex });
  }
  return { entries };
}

/** The value of the first pattern matching `moduleName`, PEFT's way; undefined when none does. */
export function matchPattern<T>(compiled: CompiledPatterns<T>, moduleName: string): { key: string; value: T } | undefined {
  for (const entry of compiled.entries) {
    const hit = entry.plain !== null ? matchPlain(entry.plain, moduleName) : (entry.regex as RE2JS).matches(moduleName);
    if (hit) return { key: entry.key, value: entry.value };
  }
  return undefined;
}

/** Python's `re.escape` for module names (escapes everything but `[A-Za-z0-9_]`). */
export function escapePattern(name: string): string {
  return name.replace(/[^A-Za-z0-9_]/g, (c) => `\\${c}`);
}
