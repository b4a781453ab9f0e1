/**
 * The routes of the reference server (server.ts). Request bodies, parameters and queries
 * are declared as TypeBox schemas on the routes (typed through the TypeBox type provider)
 * and validated by schema.ts (see `validatorCompiler`), so that a bad request gets the one
 * message shape, `<field>: expected <what>, received <what>`, as a 400.
 */
import type { FastifyInstance, FastifySchemaCompiler } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { EigenLoraxError, type ErrorCode } from '../errors.js';
import { parse, Type, type Place, type TSchema } from '../schema.js';
import type { MicroBatcher } from './batcher.js';
import { coefficientsFromBytes } from './folder.js';
import { ADAPTER_NAME_PATTERN, type ServedModel } from './model.js';
import { invalid } from '../validate.js';

/** One predict request as the batcher takes it. */
export interface PredictJob {
  adapter: string | null;
  rows: number;
  /** rows x inFeatures, row-major. */
  inputs: Float32Array;
}

/** An EigenLoraxError with the HTTP status it should get when the code's is not the one. */
export function httpError(message: string, code: ErrorCode, statusCode: number): EigenLoraxError {
  return Object.assign(new EigenLoraxError(message, code), { statusCode });
}

export function unknownAdapter(name: string): EigenLoraxError {
  return new EigenLoraxError(`adapter: no adapter named ${JSON.stringify(name)} is registered`, 'ERR_UNKNOWN_ADAPTER');
}

const AdapterName = Type.String({
  pattern: ADAPTER_NAME_PATTERN.source,
  description: 'an adapter name (1-128 letters, digits, + _ . -, starting with a letter or digit)',
});

const NameParams = Type.Object({ name: AdapterName });

const ReplaceQuery = Type.Object(
  { replace: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false'), Type.Literal('1'), Type.Literal('0'), Type.Literal('')], { description: 'true, false, 1 or 0' })) },
  { additionalProperties: false },
);

/**
 * Any number JSON gives, Infinity included (`1e999`): a number out of float32 range is then
 * an ERR_NON_FINITE of its own (predictJob), not a type error.
 */
const JsonNumber = Type.Refine(Type.Unknown({ description: 'a number' }), (v) => typeof v === 'number') as unknown as ReturnType<typeof Type.Number>;

/** The predict body for a model of `inFeatures` inputs and requests of at most `maxRows` rows. */
export function predictBody(inFeatures: number, maxRows: number) {
  const row = Type.Array(JsonNumber, { minItems: inFeatures, maxItems: inFeatures, description: `an array of ${inFeatures} numbers` });
  const rows = Type.Array(row, { minItems: 1, maxItems: maxRows, description: `an array of 1 to ${maxRows} rows (at most ${maxRows} rows: the server's maxRowsPerRequest)` });
  return Type.Object(
    {
      adapter: Type.Optional(Type.Union([AdapterName, Type.Null()])),
      inputs: Type.Union([row, rows], { description: `an array of ${inFeatures} numbers, or an array of 1 to ${maxRows} such arrays` }),
    },
    { additionalProperties: false },
  );
}

const PLACES: Record<string, Place> = {
  body: { code: 'ERR_INVALID_ARGUMENT', at: (p) => (p === '' ? 'the request body' : p) },
  params: { code: 'ERR_INVALID_ARGUMENT', at: (p) => (p === 'name' ? 'the adapter name in the URL' : `the URL parameter ${p}`) },
  querystring: { code: 'ERR_INVALID_ARGUMENT', at: (p) => (p === '' ? 'the query' : `the query parameter ${JSON.stringify(p)}`) },
};

/** fastify's validator for these routes: schema.ts, errors in its shape (400 by their code). */
export const validatorCompiler: FastifySchemaCompiler<TSchema> = ({ schema, httpPart }) => {
  const place = PLACES[httpPart ?? 'body'] ?? PLACES.body!;
  return (data: unknown) => {
    try {
      return { value: parse(schema, data, place) };
    } catch (error) {
      return { error: error as Error };
    }
  };
};

/** The job a checked predict body makes (float32 rounding can overflow: 1e39 is finite in JSON). */
function predictJob(adapter: string | null | undefined, raw: number[] | number[][], inFeatures: number): PredictJob {
  const list: number[][] = Array.isArray(raw[0]) ? (raw as number[][]) : [raw as number[]];
  const inputs = new Float32Array(list.length * inFeatures);
  list.forEach((row, r) => {
    inputs.set(row, r * inFeatures);
    const field = list.length === 1 && !Array.isArray(raw[0]) ? 'inputs' : `inputs[${r}]`;
    for (let i = 0; i < inFeatures; i++) {
      if (!Number.isFinite(inputs[r * inFeatures + i])) throw new EigenLoraxError(`${field}[${i}]: ${row[i]} is not a finite float32 number`, 'ERR_NON_FINITE');
    }
  });
  return { adapter: adapter ?? null, rows: list.length, inputs };
}

/** POST /v1/predict: one request's rows, batched with others', as logits and labels. */
export function predictRoute(app: FastifyInstance, model: ServedModel, batcher: MicroBatcher<PredictJob, Float32Array>, maxRows: number, counted: () => void): void {
  const { inFeatures, outFeatures } = model;
  app.withTypeProvider<TypeBoxTypeProvider>().post('/v1/predict', { schema: { body: predictBody(inFeatures, maxRows) } }, async (request) => {
    const job = predictJob(request.body.adapter, request.body.inputs, inFeatures);
    if (job.adapter !== null && !model.has(job.adapter)) throw unknownAdapter(job.adapter);
    counted();
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
}

/** GET, PUT and DELETE /v1/adapters[/:name]. */
export function adapterRoutes(app: FastifyInstance, model: ServedModel): void {
  const typed = app.withTypeProvider<TypeBoxTypeProvider>();
  typed.get('/v1/adapters', async () => {
    const adapters = model.adapters();
    return { count: adapters.length, adapters };
  });

  typed.get('/v1/adapters/:name', { schema: { params: NameParams } }, async (request) => {
    const adapter = model.adapter(request.params.name);
    if (adapter === undefined) throw unknownAdapter(request.params.name);
    return { adapter };
  });

  typed.put('/v1/adapters/:name', { schema: { params: NameParams, querystring: ReplaceQuery } }, async (request, reply) => {
    const { name } = request.params;
    const replace = ['true', '1', ''].includes(request.query.replace ?? 'false');
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

  typed.delete('/v1/adapters/:name', { schema: { params: NameParams } }, async (request) => {
    const { name } = request.params;
    if (!(await model.remove(name))) throw unknownAdapter(name);
    return { adapter: name, removed: true };
  });
}
