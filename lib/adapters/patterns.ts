/**
 * PEFT's `rank_pattern` / `alpha_pattern` matching, mirrored.
 *
 * PEFT (`peft.utils.other.get_pattern_key`) tries the pattern keys in insertion order and
 * takes the first `key` for which `re.match(rf"(.*\.)?({key})$", module_name)` matches:
 * the key is a regular expression (not escaped) that must match a whole trailing run of
 * dot-separated components of the module's full name (`transformer.h.0.attn.c_attn`
 * matches `c_attn`, `attn.c_attn`, `h\.\d+\.attn\.c_attn`, but not `attn` or `_attn`).
 * The module name is the one in the base model, i.e. without `base_model.model.`.
 *
 * Python and JavaScript regular expressions agree on the syntax such keys use (`.`, `*`,
 * `\d`, `[...]`, `|`, groups); Python's named groups `(?P<name>...)` are translated. A key
 * that JavaScript cannot compile is refused (ERR_ADAPTER_CONFIG) rather than ignored.
 */
import { fieldError } from './common.js';

export interface CompiledPatterns<T> {
  entries: Array<{ key: string; regex: RegExp; value: T }>;
}

/** Compiles the keys of a `rank_pattern` / `alpha_pattern` object (insertion order kept). */
export function compilePatterns<T>(patterns: Record<string, T>, file: string, field: string): CompiledPatterns<T> {
  const entries: CompiledPatterns<T>['entries'] = [];
  for (const [key, value] of Object.entries(patterns)) {
    const source = key.replace(/\(\?P<([A-Za-z_][A-Za-z0-9_]*)>/g, '(?<$1>');
    let regex: RegExp;
    try {
      regex = new RegExp(`^(?:.*\\.)?(?:${source})$`);
    } catch (cause) {
      throw fieldError('ERR_ADAPTER_CONFIG', file, `${field}.${key}`, `the key is not a valid regular expression (${(cause as Error).message})`);
    }
    entries.push({ key, regex, value });
  }
  return { entries };
}

/** The value of the first pattern matching `moduleName`, PEFT's way; undefined when none does. */
export function matchPattern<T>(compiled: CompiledPatterns<T>, moduleName: string): { key: string; value: T } | undefined {
  for (const entry of compiled.entries) {
    if (entry.regex.test(moduleName)) return { key: entry.key, value: entry.value };
  }
  return undefined;
}

/** Python's `re.escape` for module names (escapes everything but `[A-Za-z0-9_]`). */
export function escapePattern(name: string): string {
  return name.replace(/[^A-Za-z0-9_]/g, (c) => `\\${c}`);
}
