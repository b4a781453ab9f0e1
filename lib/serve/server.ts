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
import { EigenLoraxError } from '../errors.js';
import { matrix } from '../matrix.js';
import { argumentPlace, Count, parse, Type } from '../schema.js';
import { integer, invalid, object } from '../validate.js';
import { MicroBatcher, type Settled } from './batcher.js';
import { bearerMatches, checkToken, insecureHostError, isLoopback, SERVE_TOKEN_ENV, UploadLimiter } from './guard.js';
import type { ServedModel } from './model.js';
import { adapterRoutes, predictRoute, unknownAdapter, validatorCompiler, type PredictJob } from './routes.js';

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

const ServerOptionsSchema = Type.Object(
  {
    model: Type.Unknown(),
    maxBatchRows: Type.Optional(Count(1)),
    batchWindowMs: Type.Optional(Type.Number()),
    maxRowsPerRequest: Type.Optional(Count(1)),
    bodyLimit: Type.Optional(Count(1)),
    logger: Type.Optional(Type.Boolean()),
    token: Type.Optional(Type.Unknown()),
    requestTimeoutMs: Type.Optional(Count(1)),
    maxUploadsPerClient: Type.Optional(Count(1)),
  },
  { additionalProperties: false },
);

/** The options with their defaults, checked (the token by guard.ts). */
function serverSettings(options: unknown) {
  const o = parse(ServerOptionsSchema, options, argumentPlace('options'));
  const model = o.model as ServedModel;
  if (typeof model !== 'object' || model === null || typeof model.tryForward !== 'function') throw invalid('a ServedModel', 'options.model', model);
  return {
    model,
    maxBatchRows: o.maxBatchRows ?? DEFAULT_MAX_BATCH_ROWS,
    batchWindowMs: o.batchWindowMs ?? DEFAULT_BATCH_WINDOW_MS,
    maxRowsPerRequest: o.maxRowsPerRequest ?? DEFAULT_MAX_ROWS_PER_REQUEST,
    bodyLimit: o.bodyLimit ?? DEFAULT_BODY_LIMIT,
    logger: o.logger === true,
    token: o.token === undefined ? null : checkToken(o.token, 'options.token'),
    requestTimeoutMs: o.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
    maxUploadsPerClient: o.maxUploadsPerClient ?? DEFAULT_MAX_UPLOADS_PER_CLIENT,
  };
}
type Settings = ReturnType<typeof serverSettings>;

/** The batcher: one forward pass over the rows of every waiting request, across adapters. */
function predictBatcher(model: ServedModel, { maxBatchRows, batchWindowMs }: Settings): MicroBatcher<PredictJob, Float32Array> {
  const { inFeatures, outFeatures } = model;
  return new MicroBatcher<PredictJob, Float32Array>({
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
}

/** fastify with the limits, the body parsers and the schema.ts validator. */
function createApp(settings: Settings): FastifyInstance {
  const app = loadFastify()({
    bodyLimit: settings.bodyLimit,
    logger: settings.logger,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    requestTimeout: settings.requestTimeoutMs,
    connectionTimeout: settings.requestTimeoutMs,
    // A URL fastify cannot decode (a bad percent-escape) gets our error shape too.
    frameworkErrors: (error, _request, reply) => {
      void (reply as unknown as { code(n: number): { send(b: unknown): void } }).code(400).send({ error: { code: 'ERR_MALFORMED_REQUEST', message: `the request URL cannot be read: ${error.message}` } });
    },
  });
  app.setValidatorCompiler(validatorCompiler);
  // README: a predict body is JSON; text/plain is a 415, not a string that fails later.
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));
  return app;
}

/** Before the body is read: the token for changes to the adapters, then a slot for uploads. */
function guardChanges(app: FastifyInstance, token: string | null, uploads: UploadLimiter): void {
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
}

/**
 * Closing: the batches waiting run at once, and every response from now on says
 * `Connection: close`, so keep-alive clients let go (else close would wait for their
 * sockets to time out).
 */
function closeGracefully(app: FastifyInstance, batcher: MicroBatcher<PredictJob, Float32Array>): void {
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
    await batcher.close();
  });
  app.addHook('onSend', async (_request, reply) => {
    if (closing) void reply.header('connection', 'close');
  });
}

/** Every error as `{"error": {"code", "message"}}` with its status; unknown routes as 404. */
function answerErrors(app: FastifyInstance, bodyLimit: number): void {
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
}

/** GET /v1/model, /v1/stats (counted by status in onResponse) and /healthz. */
function infoRoutes(app: FastifyInstance, model: ServedModel, batcher: MicroBatcher<PredictJob, Float32Array>, settings: Settings & { token: string | null }, predictions: () => number): void {
  const started = performance.now();
  const byStatus: Record<string, number> = {};
  let requests = 0;
  app.addHook('onResponse', async (_request, reply) => {
    requests++;
    const key = String(reply.statusCode);
    byStatus[key] = (byStatus[key] ?? 0) + 1;
  });
  app.get('/v1/model', async () => ({
    inFeatures: model.inFeatures,
    outFeatures: model.outFeatures,
    layers: model.layers.map((l) => (l.kind === 'linear' ? { kind: l.kind, name: l.name, inFeatures: l.weight.cols, outFeatures: l.weight.rows, bias: l.bias !== null } : l)),
    subspace: {
      id: model.subspace.id,
      modules: [...model.subspace.modules.values()].map((m) => ({ name: m.name, dIn: m.dIn, dOut: m.dOut, kA: m.kA, kB: m.kB })),
    },
  }));
  const { maxBatchRows, batchWindowMs, maxRowsPerRequest, bodyLimit, requestTimeoutMs, maxUploadsPerClient, token } = settings;
  app.get('/v1/stats', async () => {
    const b = batcher.stats();
    return {
      uptimeSeconds: (performance.now() - started) / 1000,
      adapters: model.adapterCount,
      requests: { total: requests, predict: predictions(), byStatus: { ...byStatus } },
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
      settings: { maxBatchRows, batchWindowMs, maxRowsPerRequest, bodyLimit, requestTimeoutMs, maxUploadsPerClient, token: token !== null },
    };
  });
  app.get('/healthz', async () => ({ status: 'ok', adapters: model.adapterCount }));
}

/**
 * A fastify instance serving `model` (not listening yet: call `listen`, or use
 * {@link startServer}; `inject` works without). Closing it (`app.close()`) stops new
 * connections, answers every request already accepted (their batches run at once), and
 * then resolves.
 */
export function createServer(options: ServerOptions): FastifyInstance {
  const settings = serverSettings(options);
  const { model } = settings;
  const batcher = predictBatcher(model, settings);
  const app = createApp(settings);
  guardChanges(app, settings.token, new UploadLimiter(settings.maxUploadsPerClient));
  closeGracefully(app, batcher);
  answerErrors(app, settings.bodyLimit);
  let predictions = 0;
  predictRoute(app, model, batcher, settings.maxRowsPerRequest, () => predictions++);
  adapterRoutes(app, model);
  infoRoutes(app, model, batcher, settings, () => predictions);
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

