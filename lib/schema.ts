/**
 * The schema layer: options objects and file formats are declared once as TypeBox schemas
 * (JSON Schema, the TypeScript type inferred with `Static`), checked here with a compiled,
 * cached validator, and refused with one message shape everywhere:
 *
 *     <where>: expected <what>, received <what>
 *
 * where `<where>` is an option path (`options.components.A`), a file and field
 * (`/x/subspace.json, field "modules[0].kA"`) or a file and tensor. The error code is the
 * caller's (ERR_INVALID_ARGUMENT for options, the format's code for a file).
 */
import Type, { type Static, type TSchema } from 'typebox';
import { Compile } from 'typebox/compile';
import { Value } from 'typebox/value';
import { EigenLoraxError, type ErrorCode } from './errors.js';

export { Type, type Static, type TSchema };

/** Where a value sits: the error code to raise and how a path inside it is named. */
export interface Place {
  readonly code: ErrorCode;
  /** What a key of an object is called in messages: 'option' for options, 'name' in files. */
  readonly key?: string;
  /** The name of the value at `path` (`a.b[0]`; '' for the value itself). */
  at(path: string): string;
}

/** An options object (or another argument) named `name`: `options.a.b[0]`. */
export function argumentPlace(name: string, code: ErrorCode = 'ERR_INVALID_ARGUMENT'): Place {
  return { code, key: 'option', at: (p) => (p === '' ? name : p.startsWith('[') ? `${name}${p}` : `${name}.${p}`) };
}

/** A JSON document in `file` (optionally inside a container, e.g. a metadata key): `file, field "a.b"`. */
export function filePlace(file: string, code: ErrorCode): Place {
  return { code, at: (p) => (p === '' ? file : `${file}, field ${JSON.stringify(p)}`) };
}

/** A value described in words rather than shown (`received: said('shape [3, 4]')`). */
export class Said {
  constructor(readonly text: string) {}
}
export const said = (text: string) => new Said(text);
/** What a missing field or option is received as. */
export const NOTHING = said('nothing');

/** A short, one-line rendering of a received value (never a walk of large data). */
export function show(value: unknown): string {
  if (value instanceof Said) return value.text;
  if (value === undefined) return 'nothing';
  if (typeof value === 'number') return Number.isNaN(value) ? 'NaN' : String(value);
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'symbol') return value.toString();
  if (Array.isArray(value) && value.length > 8) return `an array of length ${value.length}`;
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    const proto = Object.getPrototypeOf(value) as object | null;
    if (proto !== Object.prototype && proto !== null) return shortObject(value);
  }
  let text: string | undefined;
  try {
    // Large arrays and class instances inside are named, not walked.
    text = JSON.stringify(value, (_key, v: unknown) => (Array.isArray(v) && v.length > 8 ? `[${v.length} items]` : typeof v === 'object' && v !== null && !Array.isArray(v) && Object.getPrototypeOf(v) !== Object.prototype && Object.getPrototypeOf(v) !== null ? shortObject(v) : v));
  } catch {
    text = undefined;
  }
  if (text === undefined) return typeof value;
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function shortObject(value: object): string {
  if (ArrayBuffer.isView(value)) return `${value.constructor.name}(${(value as unknown as { length?: number }).length ?? value.byteLength})`;
  if (value instanceof Map || value instanceof Set) return `a ${value.constructor.name} of ${value.size}`;
  const name = (value as { constructor?: { name?: string } }).constructor?.name;
  return name ? `a ${name}` : 'an object';
}

/** The one error: `<where>: expected <what>, received <what>`. */
export function mismatch(place: Place, path: string, expected: string, received: unknown): EigenLoraxError {
  return new EigenLoraxError(`${place.at(path)}: expected ${expected}, received ${show(received)}`, place.code);
}

// ---------------------------------------------------------------------------------------

type Validator = ReturnType<typeof Compile>;
const compiled = new WeakMap<TSchema, Validator>();

function validatorOf(schema: TSchema): Validator {
  let v = compiled.get(schema);
  if (v === undefined) {
    v = Compile(schema);
    compiled.set(schema, v);
  }
  return v;
}

/**
 * Returns `value` typed by `schema`, or throws the first mismatch (in declaration order)
 * as {@link mismatch}. Validation is a compiled check (cached per schema); only a value that
 * fails is walked again to name the field.
 */
export function parse<T extends TSchema>(schema: T, value: unknown, place: Place): Static<T> {
  if (validatorOf(schema).Check(value)) return value as Static<T>;
  const m = firstMismatch(schema as Node, value, '');
  if (m === undefined) throw mismatch(place, '', describe(schema as Node), value);
  if (m.stray !== undefined) {
    const key = place.key ?? 'name';
    throw mismatch(place, m.path, `one of the known ${key}s (${m.stray.join(', ')})`, said(`an unknown ${key} ${JSON.stringify(m.received)}`));
  }
  throw mismatch(place, m.path, m.expected, m.received);
}

/** True when `value` fits `schema` (compiled, cached). */
export function fits<T extends TSchema>(schema: T, value: unknown): value is Static<T> {
  return validatorOf(schema).Check(value);
}

// ---------------------------------------------------------------------------------------
// Naming the first mismatch (on the failure path only)

interface Node {
  type?: string;
  const?: unknown;
  anyOf?: Node[];
  properties?: Record<string, Node>;
  required?: string[];
  additionalProperties?: boolean | Node;
  patternProperties?: Record<string, Node>;
  items?: Node;
  minItems?: number;
  maxItems?: number;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  minLength?: number;
  pattern?: string;
  description?: string;
}

interface Found {
  path: string;
  expected: string;
  received: unknown;
  /** For a key the object does not declare: the declared keys (`received` is the key). */
  stray?: string[];
}

const join = (path: string, key: string | number) => (typeof key === 'number' ? `${path}[${key}]` : path === '' ? key : `${path}.${key}`);
const kindOf = (v: unknown) => (Array.isArray(v) ? 'array' : isRecord(v) ? 'object' : typeof v === 'number' ? 'number' : typeof v === 'string' ? 'string' : undefined);
const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v) && !ArrayBuffer.isView(v);

function firstMismatch(schema: Node, value: unknown, path: string): Found | undefined {
  if (Value.Check(schema as TSchema, value)) return undefined;
  if (schema.anyOf !== undefined) {
    // Descend into the one branch of the value's kind (an object into the object branch;
    // an array into the array branch of arrays or of scalars, as its first item is).
    const kind = kindOf(value);
    let branches = schema.anyOf.filter((b) => kind !== undefined && (b.type === kind || (kind === 'number' && b.type === 'integer')));
    if (branches.length > 1 && Array.isArray(value) && (value as unknown[]).length > 0) branches = branches.filter((b) => (b.items?.type === 'array') === Array.isArray((value as unknown[])[0]));
    if (branches.length > 1 && isRecord(value)) return firstTagged(branches, value, path);
    if (branches.length === 1) return firstMismatch(branches[0]!, value, path);
    return { path, expected: describe(schema), received: value };
  }
  if (schema.type === 'object' && isRecord(value)) {
    const properties = schema.properties ?? {};
    for (const [key, child] of Object.entries(properties)) {
      if (!(key in value) || value[key] === undefined) {
        if (schema.required?.includes(key)) return { path: join(path, key), expected: describe(child), received: NOTHING };
        continue;
      }
      const found = firstMismatch(child, value[key], join(path, key));
      if (found !== undefined) return found;
    }
    // A record (`Type.Record(Type.String(), X)`): every other key's value against X.
    const rest = Object.values(schema.patternProperties ?? {})[0] ?? (typeof schema.additionalProperties === 'object' ? schema.additionalProperties : undefined);
    if (rest !== undefined) {
      for (const [key, v] of Object.entries(value)) {
        if (key in properties) continue;
        const found = firstMismatch(rest, v, join(path, key));
        if (found !== undefined) return found;
      }
    }
    if (schema.additionalProperties === false) {
      const known = Object.keys(properties);
      const stray = Object.keys(value).find((k) => !known.includes(k));
      if (stray !== undefined) return { path: join(path, stray), expected: '', received: stray, stray: known };
    }
  }
  if (schema.type === 'array' && Array.isArray(value)) {
    const list: unknown[] = value;
    if (schema.items !== undefined) {
      for (let i = 0; i < list.length; i++) {
        const found = firstMismatch(schema.items, list[i], join(path, i));
        if (found !== undefined) return found;
      }
    }
    if (list.length < (schema.minItems ?? 0) || list.length > (schema.maxItems ?? Infinity)) {
      return { path, expected: describe(schema), received: said(`${list.length} item${list.length === 1 ? '' : 's'}`) };
    }
  }
  return { path, expected: describe(schema), received: value };
}

/** A union of objects told apart by a literal field (`kind`): the branch it names, or that field. */
function firstTagged(branches: Node[], value: Record<string, unknown>, path: string): Found | undefined {
  const tags = (b: Node) => Object.entries(b.properties ?? {}).filter(([, p]) => p.const !== undefined);
  const named = branches.filter((b) => tags(b).every(([k, p]) => value[k] === p.const));
  if (named.length === 1) return firstMismatch(named[0]!, value, path);
  const key = tags(branches[0]!)[0]?.[0];
  if (key === undefined) return { path, expected: branches.map(describe).join(' or '), received: value };
  const choices = [...new Set(branches.map((b) => JSON.stringify(b.properties?.[key]?.const)))];
  return { path: join(path, key), expected: `one of ${choices.join(', ')}`, received: key in value ? value[key] : NOTHING };
}

function range(s: Node): string {
  const lo = s.minimum !== undefined ? `>= ${s.minimum}` : s.exclusiveMinimum !== undefined ? `> ${s.exclusiveMinimum}` : undefined;
  const hi = s.maximum !== undefined ? `<= ${s.maximum}` : s.exclusiveMaximum !== undefined ? `< ${s.exclusiveMaximum}` : undefined;
  if (s.minimum !== undefined && s.maximum !== undefined) return ` in [${s.minimum}, ${s.maximum}]`;
  return [lo, hi].filter((x) => x !== undefined).map((x) => ` ${x}`).join(' and');
}

/** What a schema expects, in words (a schema's `description` says it best when given). */
export function describe(s: Node): string {
  if (s.description !== undefined) return s.description;
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.anyOf !== undefined) {
    if (s.anyOf.every((b) => b.const !== undefined)) return `one of ${s.anyOf.map((b) => JSON.stringify(b.const)).join(', ')}`;
    return s.anyOf.map(describe).join(' or ');
  }
  switch (s.type) {
    case 'integer':
      return `an integer${range(s)}`;
    case 'number':
      return `a finite number${range(s)}`;
    case 'string':
      return s.pattern !== undefined ? `a string matching /${s.pattern}/` : s.minLength ? 'a non-empty string' : 'a string';
    case 'boolean':
      return 'true or false';
    case 'null':
      return 'null';
    case 'object':
      return 'an object';
    case 'array': {
      const items = s.items === undefined ? '' : ` of ${describe(s.items).replace(/^(a|an) /, '')}s`;
      const count = s.minItems !== undefined && s.minItems === s.maxItems ? `${s.minItems} ` : s.minItems ? `at least ${s.minItems} ` : '';
      return count === '' ? `an array${items}` : `${count}${items.replace(/^ of /, '') || 'items'}`;
    }
    default:
      return 'a valid value';
  }
}

// ---------------------------------------------------------------------------------------
// Shared pieces of schemas

/** A sha256 in hex, as written in the files. */
export const Sha256Hex = Type.String({ pattern: '^[0-9a-f]{64}$', description: '64 lower-case hex digits' });
/** A non-negative safe integer (counts, sizes). */
export function Count(minimum = 0, maximum = Number.MAX_SAFE_INTEGER) {
  const open = maximum === Number.MAX_SAFE_INTEGER;
  const description = open && minimum === 1 ? 'a positive integer' : open && minimum === 0 ? 'a non-negative integer' : undefined;
  return Type.Integer({ minimum, maximum, ...(description === undefined ? {} : { description }) });
}
export const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()]);

// ---------------------------------------------------------------------------------------
// Options objects

/**
 * An options object: its option names are exactly `properties` (a typo is refused). The
 * public interface beside it keeps the documentation; {@link sameOptionNames} keeps the two
 * in step at compile time.
 */
export function Options<P extends Record<string, TSchema>>(properties: P) {
  return Type.Object(properties, { additionalProperties: false });
}
/** A path option: a non-empty string. */
export const PathOption = Type.String({ minLength: 1, description: 'a path (non-empty string)' });
/** One of the given strings. */
export function OneOf<const T extends readonly string[]>(choices: T) {
  return Type.Enum(choices as unknown as T[number][], { description: `one of ${choices.map((c) => `'${c}'`).join(', ')}` });
}
/** A function (a callback option); its own arguments are the caller's business. */
export const FunctionOption = Type.Refine(Type.Unknown({ description: 'a function' }), (v) => typeof v === 'function');
/** An instance of `type` (an AbortSignal, a ProgressBar). */
export function InstanceOf(type: abstract new (...args: never[]) => unknown, description: string) {
  return Type.Refine(Type.Unknown({ description }), (v) => v instanceof type);
}
/** `bytes`: a number or a size string (the caller parses it). */
export const Sized = Type.Union([Type.Number(), Type.String()], { description: "a number of bytes or a size such as '512MB'" });

/**
 * Compile-time: `true` only when schema `S` declares exactly the option names of the
 * interface `I`, so that the documented interface and the checking schema cannot drift.
 * Use as `const _check: SameOptionNames<typeof XSchema, XOptions> = true`.
 */
export type SameOptionNames<S extends TSchema, I> = [Exclude<keyof Static<S>, keyof I>, Exclude<keyof I, keyof Static<S>>] extends [never, never] ? true : false;
