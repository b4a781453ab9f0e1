/**
 * Who may change the server's adapters, and how much one client may upload at once:
 * the bearer token of PUT and DELETE /v1/adapters, the refusal to listen beyond loopback
 * without one, and the per-client limit on concurrent uploads.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import { EigenLoraxError } from '../errors.js';
import { invalid } from '../validate.js';

/** The environment variable startServer reads the token from when `options.token` is absent. */
export const SERVE_TOKEN_ENV = 'EIGENLORAX_SERVE_TOKEN';

/** Checks a configured token: a non-empty string of visible ASCII (it travels in a header). */
export function checkToken(value: unknown, field: string): string {
  if (typeof value !== 'string' || !/^[\x21-\x7e]{1,4096}$/.test(value)) throw invalid('a token of 1 to 4096 visible ASCII characters', field, value === undefined ? value : '(hidden)');
  return value;
}

/**
 * A compare of `Authorization: Bearer <token>` against the configured token whose time
 * does not depend on where they differ: both are hashed to 32 bytes, then compared with
 * timingSafeEqual (which needs equal lengths; the hashes hide the token's length too).
 */
export function bearerMatches(header: string | undefined, token: string): boolean {
  const m = /^Bearer +(\S+) *$/i.exec(header ?? '');
  const given = createHash('sha256').update(m?.[1] ?? '').digest();
  const expected = createHash('sha256').update(token).digest();
  return timingSafeEqual(given, expected) && m !== null;
}

/** True for a host that only this machine can reach: localhost, 127.0.0.0/8, ::1. */
export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (net.isIPv4(host)) return host.startsWith('127.');
  if (net.isIPv6(host)) return host === '::1' || /^::ffff:127\./i.test(host);
  return false;
}

/** The typed refusal of startServer to listen beyond loopback with no token. */
export function insecureHostError(host: string): EigenLoraxError {
  return new EigenLoraxError(
    `options.host: ${JSON.stringify(host)} is reachable from other machines, and no token is set: anyone could register or ` +
      `remove adapters. Set options.token (or ${SERVE_TOKEN_ENV}), listen on 127.0.0.1, or pass insecure: true`,
    'ERR_INVALID_ARGUMENT',
  );
}

/** Counts the uploads in flight per client address; `enter` false means over the limit. */
export class UploadLimiter {
  readonly #inFlight = new Map<string, number>();
  constructor(readonly max: number) {}

  /** Takes a slot for `client`; returns the release (call once), or null when none is free. */
  enter(client: string): (() => void) | null {
    const n = this.#inFlight.get(client) ?? 0;
    if (n >= this.max) return null;
    this.#inFlight.set(client, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#inFlight.get(client) ?? 1) - 1;
      if (left <= 0) this.#inFlight.delete(client);
      else this.#inFlight.set(client, left);
    };
  }
}
