/**
 * Issue 13: who may change a server's adapters (token, loopback), request timeouts,
 * concurrent uploads per client, error shapes fastify used to answer in its own format
 * (names of 101-128 characters, bad percent-escapes), and uploads whose bytes were
 * changed (30 random byte flips in the data, all refused).
 */
import test, { type ExecutionContext } from 'ava';
import http from 'node:http';
import net from 'node:net';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import {
  EigenLoraxError,
  buildSubspace,
  saveCoefficients,
  type AdapterCoefficients,
  type Subspace,
} from '../lib/index.js';
import { Linear, ReLU, Sequential } from '../lib/train/index.js';
import { ServedModel, createServer, startServer } from '../lib/serve/index.js';
import { memoryAdapter, plantedBases, plantedFactors } from './helpers/subspace-fixtures.js';
import { tempDir } from './helpers/train-fixtures.js';

const WIDTHS = [6, 5, 3];
const NAMES = ['alpha', 'bravo', 'charlie'];

async function fixture(): Promise<{ model: ServedModel; subspace: Subspace; coefficients: AdapterCoefficients[] }> {
  const base = new Sequential([Linear.create('fc1', WIDTHS[0]!, WIDTHS[1]!, { seed: 3, trainable: false }), new ReLU(), Linear.create('fc2', WIDTHS[1]!, WIDTHS[2]!, { seed: 4, trainable: false })]);
  const bases = [0, 1].map((j) => plantedBases(WIDTHS[j]!, WIDTHS[j + 1]!, 2, 2, 7 + j));
  const adapters = NAMES.map((_, i) => memoryAdapter(['fc1', 'fc2'].map((name, j) => ({ name, ...plantedFactors(bases[j]!, 2, 13 * i + j, 0.2), alpha: 1 + i }))));
  const subspace = await buildSubspace(adapters, { components: 2, seed: 1, hashSources: false, names: NAMES });
  const model = new ServedModel(base, subspace, { capacity: 2 });
  await model.register('alpha', subspace.coefficients[0]!);
  return { model, subspace, coefficients: subspace.coefficients };
}

async function coefficientBytes(t: ExecutionContext, c: AdapterCoefficients): Promise<Buffer> {
  const file = path.join(await tempDir(t, 'eigenlorax-guard-'), 'c.safetensors');
  await saveCoefficients(c, file);
  return readFile(file);
}

const octet = { 'content-type': 'application/octet-stream' };

test('with a token, PUT and DELETE need Authorization: Bearer <token> (401 otherwise); reads do not', async (t) => {
  const f = await fixture();
  const app = createServer({ model: f.model, token: 's3cret-token' });
  t.teardown(() => app.close());
  const bytes = await coefficientBytes(t, f.coefficients[1]!);
  for (const authorization of [undefined, 'Bearer wrong', 'Bearer s3cret-tokenX', 'Basic s3cret-token', 'Bearer ']) {
    const headers = authorization === undefined ? octet : { ...octet, authorization };
    const put = await app.inject({ method: 'PUT', url: '/v1/adapters/bravo', headers, payload: bytes });
    t.is(put.statusCode, 401, String(authorization));
    t.is(put.json().error.code, 'ERR_UNAUTHORIZED');
    t.is(put.headers['www-authenticate'], 'Bearer');
    const del = await app.inject({ method: 'DELETE', url: '/v1/adapters/alpha', headers: authorization === undefined ? {} : { authorization } });
    t.is(del.statusCode, 401);
  }
  t.is((await app.inject({ method: 'GET', url: '/v1/adapters/alpha' })).statusCode, 200);
  const predict = await app.inject({ method: 'POST', url: '/v1/predict', payload: { adapter: 'alpha', inputs: [1, 2, 3, 4, 5, 6] } });
  t.is(predict.statusCode, 200);
  const ok = await app.inject({ method: 'PUT', url: '/v1/adapters/bravo', headers: { ...octet, authorization: 'Bearer s3cret-token' }, payload: bytes });
  t.is(ok.statusCode, 201, ok.body);
  t.is((await app.inject({ method: 'DELETE', url: '/v1/adapters/bravo', headers: { authorization: 'bearer s3cret-token' } })).statusCode, 200);
  t.throws(() => createServer({ model: f.model, token: '' }), { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT' });
});

// Serial: it sets an environment variable that startServer reads.
test.serial('startServer refuses a non-loopback host without a token unless insecure; reads the token from EIGENLORAX_SERVE_TOKEN', async (t) => {
  const f = await fixture();
  const saved = process.env.EIGENLORAX_SERVE_TOKEN;
  t.teardown(() => {
    if (saved === undefined) delete process.env.EIGENLORAX_SERVE_TOKEN;
    else process.env.EIGENLORAX_SERVE_TOKEN = saved;
  });
  delete process.env.EIGENLORAX_SERVE_TOKEN;
  for (const host of ['0.0.0.0', '::', '192.168.1.10', 'example.org']) {
    const error = await t.throwsAsync(() => startServer({ model: f.model, host, port: 0 }), { instanceOf: EigenLoraxError });
    t.is(error?.code, 'ERR_INVALID_ARGUMENT', host);
    t.true(error?.message.includes('token') && error.message.includes('insecure'), error?.message);
  }
  const insecure = await startServer({ model: f.model, host: '0.0.0.0', port: 0, insecure: true });
  await insecure.app.close();
  const local = await startServer({ model: f.model, host: '127.0.0.1', port: 0 });
  await local.app.close();
  process.env.EIGENLORAX_SERVE_TOKEN = 'from-env';
  const withEnv = await startServer({ model: f.model, host: '0.0.0.0', port: 0 });
  delete process.env.EIGENLORAX_SERVE_TOKEN;
  t.teardown(() => withEnv.app.close());
  const url = `http://127.0.0.1:${withEnv.port}/v1/adapters/alpha`;
  t.is((await fetch(url, { method: 'DELETE' })).status, 401);
  t.is((await fetch(url, { method: 'DELETE', headers: { authorization: 'Bearer from-env' } })).status, 200);
});

test('a request that stalls is cut off after requestTimeoutMs', async (t) => {
  const f = await fixture();
  const server = await startServer({ model: f.model, port: 0, requestTimeoutMs: 300 });
  t.teardown(() => server.app.close());
  const started = Date.now();
  const closedAfter = await new Promise<number>((resolve, reject) => {
    const socket = net.connect(server.port, '127.0.0.1', () => socket.write('POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"inp'));
    socket.on('error', () => undefined);
    socket.on('close', () => resolve(Date.now() - started));
    setTimeout(() => reject(new Error('the stalled request was not cut off within 10 s')), 10_000).unref();
  });
  t.true(closedAfter >= 250 && closedAfter < 5000, `${closedAfter} ms`);
  t.throws(() => createServer({ model: f.model, requestTimeoutMs: 0 }), { code: 'ERR_INVALID_ARGUMENT' });
});

test('a client gets at most maxUploadsPerClient concurrent uploads (429 beyond), and its slots come back', async (t) => {
  const f = await fixture();
  const server = await startServer({ model: f.model, port: 0, maxUploadsPerClient: 2 });
  t.teardown(() => server.app.close());
  const bytes = await coefficientBytes(t, f.coefficients[1]!);
  // Two uploads that send half their body and wait.
  const slow = ['bravo', 'charlie'].map((name) => {
    const request = http.request({ host: '127.0.0.1', port: server.port, method: 'PUT', path: `/v1/adapters/${name}`, headers: { ...octet, 'content-length': bytes.length } });
    const done = new Promise<number>((resolve, reject) => {
      request.on('response', (r) => {
        r.resume();
        resolve(r.statusCode ?? 0);
      });
      request.on('error', reject);
    });
    request.write(bytes.subarray(0, 100));
    return { request, done };
  });
  await new Promise((resolve) => setTimeout(resolve, 200));
  const third = await fetch(`http://127.0.0.1:${server.port}/v1/adapters/delta`, { method: 'PUT', headers: octet, body: bytes });
  t.is(third.status, 429);
  t.is(((await third.json()) as { error: { code: string } }).error.code, 'ERR_TOO_MANY_REQUESTS');
  for (const s of slow) s.request.end(bytes.subarray(100));
  t.deepEqual(await Promise.all(slow.map((s) => s.done)), [201, 201]);
  const again = await fetch(`http://127.0.0.1:${server.port}/v1/adapters/charlie?replace=true`, { method: 'PUT', headers: octet, body: bytes });
  t.is(again.status, 200);
});

test('adapter names of 101-128 characters and bad percent-escapes get our error shape', async (t) => {
  const f = await fixture();
  const app = createServer({ model: f.model });
  t.teardown(() => app.close());
  for (const length of [101, 120, 128]) {
    const name = 'a'.repeat(length);
    const get = await app.inject({ method: 'GET', url: `/v1/adapters/${name}` });
    t.is(get.statusCode, 404, `${length}: ${get.body}`);
    t.is(get.json().error.code, 'ERR_UNKNOWN_ADAPTER');
    const put = await app.inject({ method: 'PUT', url: `/v1/adapters/${name}`, headers: octet, payload: await coefficientBytes(t, f.coefficients[2]!) });
    t.is(put.statusCode, 201, put.body);
  }
  const tooLong = await app.inject({ method: 'GET', url: `/v1/adapters/${'a'.repeat(129)}` });
  t.is(tooLong.statusCode, 400);
  t.is(tooLong.json().error.code, 'ERR_INVALID_ARGUMENT');
  for (const url of ['/v1/adapters/%zz', '/v1/adapters/a%E0%A4%A', '/v1/adapters/%']) {
    const bad = await app.inject({ method: 'GET', url });
    t.is(bad.statusCode, 400, `${url}: ${bad.body}`);
    t.truthy(bad.json().error?.code, bad.body);
    t.is(typeof bad.json().error?.message, 'string');
  }
});

test('30 random byte flips in the data of an uploaded coefficients file are all refused (ERR_INTEGRITY)', async (t) => {
  const f = await fixture();
  const app = createServer({ model: f.model });
  t.teardown(() => app.close());
  const bytes = await coefficientBytes(t, f.coefficients[1]!);
  const dataStart = 8 + Number(bytes.readBigUInt64LE(0));
  let seed = 1234;
  const next = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0);
  for (let i = 0; i < 30; i++) {
    const changed = Buffer.from(bytes);
    const at = dataStart + (next() % (bytes.length - dataStart));
    changed[at] = changed[at]! ^ (1 + (next() % 255));
    const put = await app.inject({ method: 'PUT', url: '/v1/adapters/bravo', headers: octet, payload: changed });
    t.is(put.statusCode, 400, `flip at ${at}: ${put.body}`);
    t.is(put.json().error.code, 'ERR_INTEGRITY');
  }
  t.is((await app.inject({ method: 'PUT', url: '/v1/adapters/bravo', headers: octet, payload: bytes })).statusCode, 201);
});
