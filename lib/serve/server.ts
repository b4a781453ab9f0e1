/**
 * The reference HTTP server (`eigenlorax serve`): a {@link ServedModel} behind fastify,
 * with concurrent requests micro-batched into one forward pass across adapters.
 *
 *   POST   /v1/predict          {"adapter": "name" | null, "inputs": [784 numbers] | [[784 numbers], ...]}
 *                               -> {"adapter", "logits": [[10 numbers], ...], "labels": [argmax, ...]}
 *   GET    /v1/adapters         the registered adapters
 *   GET    /v1/adapters/:name   one adapter
 *   PUT    /v1/adapters/:name   body: a coefficients file (saveCoefficients) as application/octet-stream;
 *                               ?replace=true to replace a registered one (201 new, 200 replaced)
 *   DELETE /v1/adapters/:name   removes it
 *   GET    /v1/model            layers, widths, the subspace's modules
 *   GET    /v1/stats            requests by status, batches, rows per batch, queue
 *   GET    /healthz             {"status": "ok"}
 *
 * Every error is `{"error": {"code", "message"}}`, the message naming the field: 400 for a
 * bad request (malformed JSON, wrong types, wrong row width, non-finite numbers, too many
 * rows, a coefficients file that is broken or of another subspace), 404 for an unknown
 * adapter or route, 409 for a taken name, 413 for a body over `bodyLimit`, 415 for a
 * content type the route does not read, 503 while shutting down. No request names a file.
 * With a token, PUT and DELETE /v1/adapters without it get 401; a client over its
 * concurrent uploads gets 429; a request slower than requestTimeoutMs gets 408.
 */
import type { FastifyError, FastifyInstance } from 'fastify';
import { createRequire } from 'node:module';
import { EigenLoraxError, type ErrorCode } from '../errors.js';
import { matrix } from '../matrix.js';
import { finiteNumber, integer, invalid, knownKeys, object } from '../validate.js';
import { MicroBatcher, type Settled } from './batcher.js';
import { coefficientsFromBytes } from './folder.js';
import { bearerMatches, checkToken, insecureHostError, isLoopback, SERVE_TOKEN_ENV, UploadLimiter } from './guard.js';
import { checkAdapterName, type ServedModel } from './model.js';

export const DEFAULT_HOST = '127.0.0.1';
export const DEFAULT_PORT = 8080;
export const DEFAULT_MAX_BATCH_ROWS = 64;
export const DEFAULT_BATCH_WINDOW_MS = 1;
export const DEFAULT_MAX_ROWS_PER_REQUEST = 64;
export const DEFAULT_BODY_LIMIT = 1 << 20;
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
export const DEFAULT_MAX_UPLOADS_PER_CLIENT = 2;
/** Longer than any valid adapter name (128 characters) even percent-encoded, so the name rule, not fastify, answers. */
const MAX_PARAM_LENGTH = 1024;

export interface ServerOptions {
  model: ServedModel;
  /** A batch is run as soon as this many rows wait (default 64; 1 turns batching off). */
  maxBatchRows?: number;
  /** How long the first waiting request waits for others, in ms (default 1). */
  batchWindowMs?: number;
  /** Rows one predict request may hold (default 64). */
  maxRowsPerRequest?: number;
  /** Request bodies over this many bytes get 413 (default 1 MiB). */
  bodyLimit?: number;
  /** fastify's request log to stderr (default false). */
  logger?: boolean;
  /**
   * When set, PUT and DELETE /v1/adapters need `Authorization: Bearer <token>` (401
   * otherwise, compared in constant time). startServer reads EIGENLORAX_SERVE_TOKEN when absent.
   */
  token?: string;
  /** A request (headers and body) must arrive within this many ms, else 408 (default 30000). */
  requestTimeoutMs?: number;
  /** Concurrent adapter uploads (PUT) per client address; more get 429 (default 2). */
  maxUploadsPerClient?: number;
}

export interface StartServerOptions extends ServerOptions {
  /** Default 127.0.0.1 (loopback only). */
  host?: string;
  /** Default 8080; 0 picks a free port. */
  port?: number;
  /** Listen on a non-loopback host without a token (refused otherwise). Default false. */
  insecure?: boolean;
}

export interface StartedServer {
  app: FastifyInstance;
  /** `http://host:port` as it listens. */
  url: string;
  host: string;
  port: number;
}

/** fastify (CommonJS) is loaded on first use, so importing eigenlorax does not pay ~80 ms for it. */
let fastifyFactory: typeof import('fastify').fastify | null = null;
function loadFastify(): typeof import('fastify').fastify {
  fastifyFactory ??= (createRequire(import.meta.url)('fastify') as typeof import('fastify')).fastify;
  return fastifyFactory;
}

/** Statuses of the EigenLoraxError codes a request can cause; anything else is a 500. */
const STATUS: Readonly<Record<string, number>> = {
  ERR_INVALID_ARGUMENT: 400,
  ERR_SHAPE_MISMATCH: 400,
  ERR_NON_FINITE: 400,
  ERR_MALFORMED_REQUEST: 400,
  ERR_SUBSPACE_FORMAT: 400,
  ERR_SUBSPACE_MISMATCH: 400,
  ERR_SAFETENSORS_FORMAT: 400,
  ERR_UNSUPPORTED_DTYPE: 400,
  ERR_TENSOR_NOT_FOUND: 400,
  ERR_LFS_POINTER: 400,
  ERR_INTEGRITY: 400,
  ERR_UNKNOWN_ADAPTER: 404,
  ERR_NOT_FOUND: 404,
  ERR_UNAUTHORIZED: 401,
  ERR_ADAPTER_EXISTS: 409,
  ERR_TOO_MANY_REQUESTS: 429,
  ERR_PAYLOAD_TOO_LARGE: 413,
  ERR_CLOSED: 503,
};

/** An EigenLoraxError with the HTTP status it should get when STATUS's is not the one. */
function httpError(message: string, code: ErrorCode, statusCode: number): EigenLoraxError {
  return Object.assign(new EigenLoraxError(message, code), { statusCode });
}

function unknownAdapter(name: string): EigenLoraxError {
  return new EigenLoraxError(`adapter: no adapter named ${JSON.stringify(name)} is registered`, 'ERR_UNKNOWN_ADAPTER');
}

interface PredictJob {
  adapter: string | null;
  rows: number;
  /** rows x inFeatures, row-major. */
  inputs: Float32Array;
}

/** Reads and checks a predict body; every failure names its field. */
function parsePredict(body: unknown, inFeatures: number, maxRows: number): PredictJob {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw invalid('a JSON object { "adapter", "inputs" }', 'the request body', body);
  const b = body as Record<string, unknown>;
  for (const key of Object.keys(b)) if (key !== 'adapter' && key !== 'inputs') throw invalid('only the fields adapter and inputs', `the field ${JSON.stringify(key)}`, b[key]);
  const adapter = b.adapter === undefined || b.adapter === null ? null : checkAdapterName(b.adapter, 'adapter');
  const raw = b.inputs;
  const shape = `an array of ${inFeatures} numbers, or an array of 1 to ${maxRows} such arrays`;
  if (!Array.isArray(raw) || raw.length === 0) throw invalid(shape, 'inputs', raw);
  const single = !Array.isArray(raw[0]);
  const rows = single ? 1 : raw.length;
  if (rows > maxRows) throw invalid(`at most ${maxRows} rows (the server's maxRowsPerRequest)`, 'inputs', raw);
  const inputs = new Float32Array(rows * inFeatures);
  for (let r = 0; r < rows; r++) {
    const row: unknown = single ? raw : raw[r];
    const field = single ? 'inputs' : `inputs[${r}]`;
    if (!Array.isArray(row) || row.length !== inFeatures) throw invalid(`an array of ${inFeatures} numbers`, field, row);
    const offset = r * inFeatures;
    for (let i = 0; i < inFeatures; i++) {
      const v: unknown = row[i];
      if (typeof v !== 'number') throw invalid('a number', `${field}[${i}]`, v);
      inputs[offset + i] = v;
      // Checked after rounding: 1e39 is finite as JSON but not as float32.
      if (!Number.isFinite(inputs[offset + i])) throw new EigenLoraxError(`${field}[${i}]: ${v} is not a finite float32 number`, 'ERR_NON_FINITE');
    }
  }
  return { adapter, rows, inputs };
}

function parseReplace(query: unknown): boolean {
  const q = (query ?? {}) as Record<string, unknown>;
  for (const key of Object.keys(q)) if (key !== 'replace') throw invalid('only the query parameter replace', `the query parameter ${JSON.stringify(key)}`, q[key]);
  const v = q.replace;
  if (v === undefined || v === 'false' || v === '0') return false;
  if (v === 'true' || v === '1' || v === '') return true;
  throw invalid('true, false, 1 or 0', 'the query parameter replace', v);
}

/**
 * A fastify instance serving `model` (not listening yet: call `listen`, or use
 * {@link startServer}; `inject` works without). Closing it (`app.close()`) stops new
 * connections, answers every request already accepted (their batches run at once), and
 * then resolves.
 */
export function createServer(options: ServerOptions): FastifyInstance {
  const o = object(options, 'options');
  knownKeys(o, 'options', ['model', 'maxBatchRows', 'batchWindowMs', 'maxRowsPerRequest', 'bodyLimit', 'logger', 'token', 'requestTimeoutMs', 'maxUploadsPerClient']);
  const model = o.model as ServedModel;
  if (typeof model !== 'object' || model === null || typeof model.tryForward !== 'function') throw invalid('a ServedModel', 'options.model', model);
  const maxBatchRows = integer(o.maxBatchRows ?? DEFAULT_MAX_BATCH_ROWS, 'options.maxBatchRows', 1);
  const batchWindowMs = finiteNumber(o.batchWindowMs ?? DEFAULT_BATCH_WINDOW_MS, 'options.batchWindowMs');
  const maxRowsPerRequest = integer(o.maxRowsPerRequest ?? DEFAULT_MAX_ROWS_PER_REQUEST, 'options.maxRowsPerRequest', 1);
  const bodyLimit = integer(o.bodyLimit ?? DEFAULT_BODY_LIMIT, 'options.bodyLimit', 1);
  if (o.logger !== undefined && typeof o.logger !== 'boolean') throw invalid('true or false', 'options.logger', o.logger);
  const token = o.token === undefined ? null : checkToken(o.token, 'options.token');
  const requestTimeoutMs = integer(o.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS, 'options.requestTimeoutMs', 1);
  const uploads = new UploadLimiter(integer(o.maxUploadsPerClient ?? DEFAULT_MAX_UPLOADS_PER_CLIENT, 'options.maxUploadsPerClient', 1));
  const { inFeatures, outFeatures } = model;

  const batcher = new MicroBatcher<PredictJob, Float32Array>({
    maxBatchRows,
    batchWindowMs,
    async run(jobs) {
      const n = jobs.reduce((sum, j) => sum + j.rows, 0);
      const x = matrix(n, inFeatures);
      const names: Array<string | null> = [];
      let at = 0;
      for (const job of jobs) {
        x.data.set(job.inputs, at * inFeatures);
        for (let r = 0; r < job.rows; r++) names.push(job.adapter);
        at += job.rows;
      }
      const { output, unknownRows } = await model.tryForward(x, names);
      const unknown = new Set(unknownRows);
      at = 0;
      return jobs.map((job): Settled<Float32Array> => {
        const start = at;
        at += job.rows;
        // Removed after the request was accepted, before its batch ran.
        if (unknown.has(start)) return { ok: false, error: unknownAdapter(job.adapter ?? '') };
        return { ok: true, value: output.data.slice(start * outFeatures, at * outFeatures) };
      });
    },
  });

  const app = loadFastify()({
    bodyLimit,
    logger: o.logger === true,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    requestTimeout: requestTimeoutMs,
    connectionTimeout: requestTimeoutMs,
    // A URL fastify cannot decode (a bad percent-escape) gets our error shape too.
    frameworkErrors: (error, _request, reply) => {
      void (reply as unknown as { code(n: number): { send(b: unknown): void } }).code(400).send({ error: { code: 'ERR_MALFORMED_REQUEST', message: `the request URL cannot be read: ${error.message}` } });
    },
  });
  // README: a predict body is JSON; text/plain is a 415, not a string that fails later.
  app.removeContentTypeParser('text/plain');
  const started = performance.now();
  const byStatus: Record<string, number> = {};
  let requests = 0;
  let predictions = 0;

  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));
  // Before the body is read: the token for changes to the adapters, then a slot for uploads.
  app.addHook('onRequest', async (request, reply) => {
    const changes = (request.method === 'PUT' || request.method === 'DELETE') && request.url.startsWith('/v1/adapters/');
    if (!changes) return;
    if (token !== null && !bearerMatches(request.headers.authorization, token)) {
      void reply.header('www-authenticate', 'Bearer');
      throw new EigenLoraxError(`${request.method} /v1/adapters needs the header Authorization: Bearer <token> with the server's token`, 'ERR_UNAUTHORIZED');
    }
    if (request.method !== 'PUT') return;
    const release = uploads.enter(request.ip);
    if (release === null) {
      throw new EigenLoraxError(`this client already has ${uploads.max} uploads in progress (the server's maxUploadsPerClient); retry when one ends`, 'ERR_TOO_MANY_REQUESTS');
    }
    reply.raw.once('close', release);
  });
  app.addHook('onResponse', async (_request, reply) => {
    requests++;
    const key = String(reply.statusCode);
    byStatus[key] = (byStatus[key] ?? 0) + 1;
  });
  // Closing: the batches waiting run at once, and every response from now on says
  // `Connection: close`, so keep-alive clients let go (else close would wait for their
  // sockets to time out).
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
    await batcher.close();
  });
  app.addHook('onSend', async (_request, reply) => {
    if (closing) void reply.header('connection', 'close');
  });

  app.setErrorHandler((error: FastifyError | EigenLoraxError, request, reply) => {
    let status: number;
    let code: string;
    let message = error.message;
    if (error instanceof EigenLoraxError) {
      code = error.code;
      status = (error as { statusCode?: number }).statusCode ?? STATUS[code] ?? 500;
    } else if (typeof error.statusCode === 'number' && error.statusCode >= 400 && error.statusCode < 500) {
      // fastify's own: body parsing, limits, content types.
      status = error.statusCode;
      code = status === 413 ? 'ERR_PAYLOAD_TOO_LARGE' : 'ERR_MALFORMED_REQUEST';
      if (status === 413) message = `the request body is over the server's limit of ${bodyLimit} bytes`;
      else if (status === 415) message = `content type ${JSON.stringify(request.headers['content-type'] ?? '')} is not read by ${request.method} ${request.routeOptions.url ?? request.url}`;
    } else {
      status = 500;
      code = 'ERR_INTERNAL';
    }
    if (status >= 500) request.log.error(error);
    void reply.code(status).send({ error: { code, message } });
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).send({ error: { code: 'ERR_NOT_FOUND', message: `no route ${request.method} ${request.url.split('?')[0]}` } });
  });

  app.post('/v1/predict', async (request) => {
    const job = parsePredict(request.body, inFeatures, maxRowsPerRequest);
    if (job.adapter !== null && !model.has(job.adapter)) throw unknownAdapter(job.adapter);
    predictions++;
    const out = await batcher.submit(job, job.rows);
    const logits: number[][] = [];
    const labels: number[] = [];
    for (let r = 0; r < job.rows; r++) {
      const row = Array.from(out.subarray(r * outFeatures, (r + 1) * outFeatures));
      let best = 0;
      for (let c = 1; c < row.length; c++) if (row[c]! > row[best]!) best = c;
      logits.push(row);
      labels.push(best);
    }
    return { adapter: job.adapter, logits, labels };
  });

  app.get('/v1/adapters', async () => {
    const adapters = model.adapters();
    return { count: adapters.length, adapters };
  });

  app.get<{ Params: { name: string } }>('/v1/adapters/:name', async (request) => {
    const name = checkAdapterName(request.params.name, 'the adapter name in the URL');
    const adapter = model.adapter(name);
    if (adapter === undefined) throw unknownAdapter(name);
    return { adapter };
  });

  app.put<{ Params: { name: string } }>('/v1/adapters/:name', async (request, reply) => {
    const name = checkAdapterName(request.params.name, 'the adapter name in the URL');
    const replace = parseReplace(request.query);
    const body = request.body;
    if (!Buffer.isBuffer(body)) {
      const type = request.headers['content-type'] ?? '';
      if (type.startsWith('application/octet-stream')) throw invalid('the bytes of a coefficients file', 'the request body', 'nothing');
      throw httpError(
        `the request body must be a coefficients file (as saveCoefficients writes) sent as application/octet-stream, not ${JSON.stringify(type)}`,
        'ERR_MALFORMED_REQUEST',
        415,
      );
    }
    if (!replace && model.has(name)) throw new EigenLoraxError(`An adapter named ${JSON.stringify(name)} is already registered (PUT with ?replace=true to replace it)`, 'ERR_ADAPTER_EXISTS');
    const coefficients = await coefficientsFromBytes(body, model.subspace, 'the request body');
    const replaced = model.has(name);
    const adapter = await model.register(name, coefficients, { replace });
    void reply.code(replaced ? 200 : 201);
    return { adapter, replaced };
  });

  app.delete<{ Params: { name: string } }>('/v1/adapters/:name', async (request) => {
    const name = checkAdapterName(request.params.name, 'the adapter name in the URL');
    if (!(await model.remove(name))) throw unknownAdapter(name);
    return { adapter: name, removed: true };
  });

  app.get('/v1/model', async () => ({
    inFeatures,
    outFeatures,
    layers: model.layers.map((l) => (l.kind === 'linear' ? { kind: l.kind, name: l.name, inFeatures: l.weight.cols, outFeatures: l.weight.rows, bias: l.bias !== null } : l)),
    subspace: {
      id: model.subspace.id,
      modules: [...model.subspace.modules.values()].map((m) => ({ name: m.name, dIn: m.dIn, dOut: m.dOut, kA: m.kA, kB: m.kB })),
    },
  }));

  app.get('/v1/stats', async () => {
    const b = batcher.stats();
    return {
      uptimeSeconds: (performance.now() - started) / 1000,
      adapters: model.adapterCount,
      requests: { total: requests, predict: predictions, byStatus: { ...byStatus } },
      batches: {
        count: b.batches,
        requests: b.items,
        rows: b.rows,
        meanRows: b.batches > 0 ? b.rows / b.batches : 0,
        meanRequests: b.batches > 0 ? b.items / b.batches : 0,
        maxRows: b.maxBatchRows,
        queuedRequests: b.queuedItems,
        queuedRows: b.queuedRows,
        running: b.running,
      },
      settings: { maxBatchRows, batchWindowMs, maxRowsPerRequest, bodyLimit, requestTimeoutMs, maxUploadsPerClient: uploads.max, token: token !== null },
    };
  });

  app.get('/healthz', async () => ({ status: 'ok', adapters: model.adapterCount }));

  return app;
}

/** createServer, then listen (default 127.0.0.1:8080; port 0 picks a free one). */
export async function startServer(options: StartServerOptions): Promise<StartedServer> {
  const o = object(options, 'options');
  const { host: hostOption, port: portOption, insecure, ...rest } = o as unknown as StartServerOptions;
  const host = hostOption ?? DEFAULT_HOST;
  if (typeof host !== 'string' || host.length === 0) throw invalid('a host name or address', 'options.host', host);
  const port = integer(portOption ?? DEFAULT_PORT, 'options.port', 0, 65535);
  if (insecure !== undefined && typeof insecure !== 'boolean') throw invalid('true or false', 'options.insecure', insecure);
  const fromEnv = process.env[SERVE_TOKEN_ENV];
  if (rest.token === undefined && fromEnv !== undefined && fromEnv !== '') rest.token = checkToken(fromEnv, SERVE_TOKEN_ENV);
  if (rest.token === undefined && insecure !== true && !isLoopback(host)) throw insecureHostError(host);
  const app = createServer(rest);
  try {
    await app.listen({ host, port });
  } catch (error) {
    await app.close();
    throw error;
  }
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new EigenLoraxError('the server has no TCP address', 'ERR_INTERNAL');
  const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return { app, url: `http://${shown}:${address.port}`, host: address.address, port: address.port };
}

