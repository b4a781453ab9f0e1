/**
 * The options of trainModel declared once as a schema: option names (a typo is refused),
 * types and ranges, in the one message shape (`options.batchSize: expected a positive
 * integer, received 0`). What a schema cannot say (a Loss or Optimizer object, a stream,
 * a function, an AbortSignal) is checked where it is resolved (loop.ts).
 */
import { argumentPlace, Count, parse, Type, type Static } from '../schema.js';

const Positive = Type.Number({ exclusiveMinimum: 0, description: 'a number > 0' });

export const EarlyStoppingOptionsSchema = Type.Object(
  { patience: Count(1), minDelta: Type.Optional(Type.Number()), restoreBest: Type.Optional(Type.Boolean()) },
  { additionalProperties: false },
);

export const CheckpointOptionsSchema = Type.Object(
  { path: Type.String({ minLength: 1, description: 'a file path' }), everySteps: Type.Optional(Count(1)), everyEpochs: Type.Optional(Count(1)) },
  { additionalProperties: false },
);

export const TrainOptionsSchema = Type.Object(
  {
    loss: Type.Optional(Type.Unknown()),
    optimizer: Type.Optional(Type.Unknown()),
    schedule: Type.Optional(Type.Unknown()),
    epochs: Type.Optional(Count(1)),
    maxSteps: Type.Optional(Count(1)),
    batchSize: Type.Optional(Count(1)),
    dropLast: Type.Optional(Type.Boolean()),
    shuffle: Type.Optional(Type.Boolean()),
    seed: Type.Optional(Count(0, 0xffffffff)),
    clipGradNorm: Type.Optional(Positive),
    evalEvery: Type.Optional(Type.Union([Type.Literal('epoch'), Count(1)], { description: "'epoch' or a positive integer" })),
    evalBatchSize: Type.Optional(Count(1)),
    monitor: Type.Optional(Type.Union([Type.Literal('loss'), Type.Literal('accuracy')])),
    earlyStopping: Type.Optional(EarlyStoppingOptionsSchema),
    checkpoint: Type.Optional(CheckpointOptionsSchema),
    resume: Type.Optional(Type.Union([Type.Boolean(), Type.String({ minLength: 1 })], { description: 'true, false or a checkpoint path' })),
    progress: Type.Optional(Type.Unknown()),
    onEvent: Type.Optional(Type.Unknown()),
    signal: Type.Optional(Type.Unknown()),
  },
  { additionalProperties: false },
);

export type CheckedTrainOptions = Static<typeof TrainOptionsSchema>;

/** The options object, checked against {@link TrainOptionsSchema} (ERR_INVALID_ARGUMENT naming `options.<path>`). */
export function checkTrainOptions(options: unknown): Record<string, unknown> & CheckedTrainOptions {
  return parse(TrainOptionsSchema, options, argumentPlace('options')) as Record<string, unknown> & CheckedTrainOptions;
}
