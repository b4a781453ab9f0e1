/**
 * GGUF files built byte by byte, independently of lib/io/gguf-write.ts, for the reader's
 * tests (valid files and every kind of malformed one), and `parseWithHuggingFace`, the
 * independent reader (@huggingface/gguf) every file we write is checked with.
 */
import { gguf } from '@huggingface/gguf';

const enc = new TextEncoder();

export class GgufBuilder {
  parts: Uint8Array[] = [];

  get length(): number {
    return this.parts.reduce((n, p) => n + p.byteLength, 0);
  }

  u32(v: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, true);
    this.parts.push(b);
    return this;
  }

  u64(v: number | bigint): this {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
    this.parts.push(b);
    return this;
  }

  bytes(b: Uint8Array): this {
    this.parts.push(b);
    return this;
  }

  str(s: string): this {
    const b = enc.encode(s);
    return this.u64(b.length).bytes(b);
  }

  /** A u32 metadata entry. */
  kvU32(key: string, v: number): this {
    return this.str(key).u32(4).u32(v);
  }

  kvString(key: string, v: string): this {
    return this.str(key).u32(8).str(v);
  }

  kvF32(key: string, v: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    return this.str(key).u32(6).bytes(b);
  }

  /** A tensor info: numpy shape (written reversed), ggml type code, offset. */
  tensor(name: string, shape: number[], type: number, offset: number): this {
    this.str(name).u32(shape.length);
    for (const d of [...shape].reverse()) this.u64(d);
    return this.u32(type).u64(offset);
  }

  padTo(alignment: number): this {
    const rest = this.length % alignment;
    if (rest !== 0) this.parts.push(new Uint8Array(alignment - rest));
    return this;
  }

  build(): Uint8Array {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const p of this.parts) {
      out.set(p, at);
      at += p.byteLength;
    }
    return out;
  }
}

/** Header start: magic, version 3, counts. */
export function ggufStart(tensors: number | bigint, kvs: number | bigint, version = 3): GgufBuilder {
  return new GgufBuilder().bytes(enc.encode('GGUF')).u32(version).u64(tensors).u64(kvs);
}

export function f32Bytes(values: number[]): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}

/** The file parsed by @huggingface/gguf (an independent reader): metadata, tensor infos, data offset. */
export async function parseWithHuggingFace(file: string) {
  return gguf(file, { allowLocalFile: true, typedMetadata: true });
}
