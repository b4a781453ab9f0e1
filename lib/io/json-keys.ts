/**
 * Duplicate object keys in JSON text. `JSON.parse` keeps the last of two equal keys, so a
 * header with a tensor listed twice would be read with one of them silently dropped; the
 * safetensors reference refuses such headers, and so do we. One pass over the text, each
 * key decoded once: linear time.
 */

/**
 * The keys of one object: a short list searched in place while small (a safetensors header
 * is one large object of thousands of three-key objects), a Set beyond that.
 */
class KeySet {
  #list: string[] = [];
  #set: Set<string> | null = null;

  /** Adds `key`; false when it was already there. */
  add(key: string): boolean {
    if (this.#set !== null) {
      if (this.#set.has(key)) return false;
      this.#set.add(key);
      return true;
    }
    if (this.#list.includes(key)) return false;
    this.#list.push(key);
    if (this.#list.length > 16) this.#set = new Set(this.#list);
    return true;
  }
}

/**
 * The first key that appears twice in one object of `text` (compared after decoding
 * escapes, as JSON.parse compares them), with the path of its object; undefined when none
 * does. `text` must be valid JSON (call after JSON.parse succeeded).
 */
export function findDuplicateKey(text: string): { key: string; path: string } | undefined {
  // One frame per open object or array: its key set (null for arrays), whether the next
  // string is a key, and the key it is under in its parent (for the message).
  const stack: Array<{ keys: KeySet | null; expectKey: boolean; name: string }> = [];
  let lastKey = '';
  // The first backslash at or after where the scan is (-1: none left). It only moves
  // forward, so finding it costs one pass in all.
  let slash = text.indexOf('\\');
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      // A string without a backslash ends at the next quote (found natively); one with
      // escapes is walked a character at a time.
      let j = text.indexOf('"', i + 1);
      if (slash !== -1 && slash <= i) slash = text.indexOf('\\', i + 1);
      const escaped = slash !== -1 && slash < j;
      if (escaped) {
        j = i + 1;
        while (text.charCodeAt(j) !== 0x22) {
          if (text.charCodeAt(j) === 0x5c /* \ */) j++;
          j++;
        }
      }
      const top = stack[stack.length - 1];
      if (top !== undefined && top.keys !== null && top.expectKey) {
        const key = escaped ? (JSON.parse(text.slice(i, j + 1)) as string) : text.slice(i + 1, j);
        if (!top.keys.add(key)) return { key, path: stack.map((f) => f.name).filter(Boolean).join('.') };
        top.expectKey = false;
        lastKey = key;
      }
      i = j;
    } else if (c === 0x7b /* { */) {
      const parent = stack[stack.length - 1];
      stack.push({ keys: new KeySet(), expectKey: true, name: parent?.keys === null ? '[]' : lastKey });
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
