/**
 * Duplicate object keys in JSON text. `JSON.parse` keeps the last of two equal keys, so a
 * header with a tensor listed twice would be read with one of them silently dropped; the
 * safetensors reference refuses such headers, and so do we. One pass over the text, each
 * key decoded once: linear time.
 */

/**
 * The first key that appears twice in one object of `text` (compared after decoding
 * escapes, as JSON.parse compares them), with the path of its object; undefined when none
 * does. `text` must be valid JSON (call after JSON.parse succeeded).
 */
export function findDuplicateKey(text: string): { key: string; path: string } | undefined {
  // One frame per open object or array: its key set (null for arrays), whether the next
  // string is a key, and the key it is under in its parent (for the message).
  const stack: Array<{ keys: Set<string> | null; expectKey: boolean; name: string }> = [];
  let lastKey = '';
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      let escaped = false;
      while (text.charCodeAt(j) !== 0x22) {
        if (text.charCodeAt(j) === 0x5c /* \ */) {
          escaped = true;
          j++;
        }
        j++;
      }
      const top = stack[stack.length - 1];
      if (top !== undefined && top.keys !== null && top.expectKey) {
        const key = escaped ? (JSON.parse(text.slice(i, j + 1)) as string) : text.slice(i + 1, j);
        if (top.keys.has(key)) return { key, path: stack.map((f) => f.name).filter(Boolean).join('.') };
        top.keys.add(key);
        top.expectKey = false;
        lastKey = key;
      }
      i = j;
    } else if (c === 0x7b /* { */) {
      const parent = stack[stack.length - 1];
      stack.push({ keys: new Set(), expectKey: true, name: parent?.keys === null ? '[]' : lastKey });
    } else if (c === 0x5b /* [ */) {
      stack.push({ keys: null, expectKey: false, name: lastKey });
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x2c /* , */) {
      const top = stack[stack.length - 1];
      if (top !== undefined && top.keys !== null) top.expectKey = true;
    }
  }
  return undefined;
}
