/**
 * The text-level helpers of reading and writing safetensors headers, against references
 * computed another way: findDuplicateKey on JSON written here with known duplicates and
 * every escape spelling, compareUtf8 against comparing the encoded UTF-8 bytes; and the
 * overlap check of tensors' data offsets.
 */
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { openSafetensors } from '../lib/io/safetensors.js';
import { findDuplicateKey } from '../lib/io/json-keys.js';
import { compareUtf8 } from '../lib/io/safetensors-write.js';
import { freshSeed, rng } from './helpers/random.js';
import { safetensorsBytes } from './helpers/safetensors-fixtures.js';

/** Characters that stress the scanner and the comparison: quotes, backslashes, controls, 2-4 byte UTF-8. */
const ALPHABET = ['a', 'b', 'z', '.', '_', '0', '9', '"', '\\', '/', '\n', '\u0001', 'é', '\u07ff', '\u0800', '\uffee', '\uff21', '\ue000', '𝄞', '😀', '\ud7ff'];

function randomText(random: () => number, max: number): string {
  let s = '';
  const n = Math.floor(random() * max);
  for (let i = 0; i < n; i++) s += ALPHABET[Math.floor(random() * ALPHABET.length)];
  return s;
}

/** A JSON string literal for `s`, each character spelled literally or escaped at random (as a writer may). */
function spell(s: string, random: () => number): string {
  let out = '"';
  for (const ch of s) {
    const units = [...ch].join('');
    const code = ch.codePointAt(0) as number;
    const mustEscape = ch === '"' || ch === '\\' || code < 0x20;
    const r = random();
    if (!mustEscape && r < 0.6) out += units;
    else if ((ch === '"' || ch === '\\') && r < 0.8) out += `\\${ch}`;
    else if (ch === '\n' && r < 0.8) out += '\\n';
    else for (let i = 0; i < units.length; i++) out += `\\u${units.charCodeAt(i).toString(16).padStart(4, '0')}`;
  }
  return `${out}"`;
}

test('findDuplicateKey finds the one repeated key, however it is spelled, and nothing in headers without one', (t) => {
  const seed = freshSeed();
  const random = rng(seed);
  for (let round = 0; round < 300; round++) {
    // A header-like object: entries of three-key objects, strings and arrays; keys unique by a suffix.
    const entries = Math.floor(random() * 30) + 1;
    const keys = Array.from({ length: entries }, (_, i) => `${randomText(random, 6)}#${i}`);
    const values = keys.map((_, i) => {
      const inner = ['dtype', 'shape', 'data_offsets'].map((k) => `${spell(k, random)}:${random() < 0.5 ? spell(randomText(random, 4), random) : `[${i},${i + 1}]`}`);
      return `{${inner.join(',')}}`;
    });
    const duplicate = random() < 0.5;
    const nested = random() < 0.3;
    const parts = keys.map((k, i) => `${spell(k, random)}:${values[i]}`);
    let expected: { key: string; path: string } | undefined;
    if (duplicate && nested) {
      // A key repeated inside one entry's object.
      const at = Math.floor(random() * entries);
      parts[at] = `${spell(keys[at]!, random)}:{"dtype":"F32",${spell('shape', random)}:[1],${spell('dtype', random)}:"F16"}`;
      expected = { key: 'dtype', path: keys[at]! };
    } else if (duplicate) {
      const at = Math.floor(random() * entries);
      parts.splice(at + 1 + Math.floor(random() * (entries - at)), 0, `${spell(keys[at]!, random)}:{}`);
      expected = { key: keys[at]!, path: '' };
    }
    const text = `{${parts.join(random() < 0.5 ? ',' : ' , ')}}`;
    JSON.parse(text); // valid JSON, as findDuplicateKey requires
    t.deepEqual(findDuplicateKey(text), expected, `seed ${seed}, round ${round}: ${text.slice(0, 200)}`);
  }
});

test('compareUtf8 orders as the UTF-8 bytes do', (t) => {
  const seed = freshSeed();
  const random = rng(seed);
  for (let i = 0; i < 20000; i++) {
    const a = randomText(random, 5);
    // Often a shared prefix, so that the first difference falls anywhere.
    const b = random() < 0.5 ? a.slice(0, Math.floor(random() * (a.length + 1))) + randomText(random, 3) : randomText(random, 5);
    const expected = Math.sign(Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8')));
    if (Math.sign(compareUtf8(a, b)) !== expected) {
      t.fail(`seed ${seed}: ${JSON.stringify(a)} vs ${JSON.stringify(b)}: ${compareUtf8(a, b)}, bytes say ${expected}`);
      return;
    }
  }
  t.pass();
});

test('a header whose tensors overlap is refused naming both and their spans', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'eigenlorax-header-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'overlap.safetensors');
  const header = '{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}';
  await writeFile(file, safetensorsBytes(header, new Uint8Array(12)));
  const error = await t.throwsAsync(() => openSafetensors(file));
  t.is((error as { code?: string }).code, 'ERR_SAFETENSORS_FORMAT');
  t.regex(error!.message, /"b".*data_offsets \[4, 12\] overlap those of tensor "a" \[0, 8\]/);
});
