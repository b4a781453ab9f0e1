/**
 * SHA-256 off the event loop: the content digests (digest.ts) and subspace ids hash
 * hundreds of megabytes, which Node's hash does on the JS thread (a 134 MB subspace: about
 * 90 ms in one block). Here the hashing runs on the addon's compute thread (native/core/
 * sha256.h: the CPU's SHA extensions where present, about as fast as OpenSSL's), while
 * JavaScript goes on parsing, reading and writing.
 */
import * as ops from '../native/ops.js';

/** Updates queued before `update` waits for the oldest (each holds a copy of its parts, unless owned memory). */
const UPDATES_IN_FLIGHT = 4;

/**
 * Text parts are encoded here, then copied by the call: a fresh Buffer per string cost
 * about 20 ms for the 3 MB header meaning of a shard's bundle (new memory faults page by
 * page on this VM); encoding into memory already touched, 0.2 ms.
 */
let textScratch = Buffer.alloc(0);
const KEEP_TEXT_SCRATCH = 16 << 20;

export class Sha256Stream {
  readonly #stream = ops.sha256Stream();
  readonly #pending: Array<Promise<void>> = [];
  #failure: { error: unknown } | null = null;

  /**
   * Queues `parts` (strings as UTF-8) behind the earlier updates. They are the job's own
   * once this returns (a copy, or owned memory held): the caller may change or reuse them
   * at once. The promise resolves when another update may be queued; waiting for it keeps
   * at most a few updates' copies alive.
   */
  update(parts: ReadonlyArray<ArrayBufferView | string>): Promise<void> {
    let textBytes = 0;
    for (const p of parts) if (typeof p === 'string') textBytes += Buffer.byteLength(p, 'utf8');
    if (textScratch.byteLength < textBytes) textScratch = Buffer.allocUnsafeSlow(textBytes);
    let at = 0;
    const views = parts.map((p) => {
      if (typeof p !== 'string') return new Uint8Array(p.buffer, p.byteOffset, p.byteLength);
      const n = textScratch.write(p, at, 'utf8');
      at += n;
      return textScratch.subarray(at - n, at);
    });
    const job = ops.sha256Update({ stream: this.#stream, parts: views }); // copied now: the scratch is free again
    if (textScratch.byteLength > KEEP_TEXT_SCRATCH) textScratch = Buffer.alloc(0);
    job.catch((error: unknown) => {
      this.#failure ??= { error };
    });
    this.#pending.push(job);
    return this.#pending.length > UPDATES_IN_FLIGHT ? this.#pending.shift()!.catch(() => undefined) : Promise.resolve();
  }

  /** The lowercase hex digest of every part given; the stream is spent afterwards. */
  async digest(): Promise<string> {
    const digest = ops.sha256Digest({ stream: this.#stream });
    digest.catch(() => undefined); // an update's failure is reported first
    await Promise.allSettled(this.#pending);
    if (this.#failure !== null) throw this.#failure.error;
    return digest;
  }
}
