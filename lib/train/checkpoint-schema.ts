/**
 * The JSON record of a training checkpoint (`__metadata__["eigenlorax.checkpoint"]`, see
 * checkpoint.ts) declared as a schema. `LoopState` (checkpoint.ts) must stay assignable
 * from it: a field added to the loop state without being added here does not compile.
 */
import { Count, Nullable, parse, Type, type Place, type Static } from '../schema.js';
import type { LoopState } from './checkpoint.js';
import type { ScheduleState } from './optim.js';

const Accuracy = Nullable(Type.Number());

export const EvalRecordSchema = Type.Object({
  step: Count(),
  epoch: Count(),
  source: Type.Union([Type.Literal('validation'), Type.Literal('train')]),
  loss: Type.Number(),
  accuracy: Accuracy,
});

export const EpochRecordSchema = Type.Object({ epoch: Count(), step: Count(), loss: Type.Number(), accuracy: Accuracy });

export const RunFingerprintSchema = Type.Object({
  batchSize: Count(1),
  seed: Count(),
  shuffle: Type.Boolean(),
  dropLast: Type.Boolean(),
  trainRows: Count(),
  loss: Type.String(),
  parameters: Type.Record(Type.String(), Type.Array(Count())),
  frozen: Type.String(),
});

export const LoopStateSchema = Type.Object({
  step: Count(),
  epoch: Count(),
  batch: Count(),
  rng: Type.Array(Type.Number()),
  epochLossSum: Type.Number(),
  epochCorrect: Type.Number(),
  epochRows: Type.Number(),
  optimizer: Type.Object({
    kind: Type.Union([Type.Literal('sgd'), Type.Literal('adam'), Type.Literal('adamw')]),
    step: Count(),
    hyper: Type.Record(Type.String(), Type.Union([Type.Number(), Type.Boolean()])),
  }),
  // Checked by the schedule that restores it (optim.ts).
  schedule: Type.Unsafe<ScheduleState>(Type.Object({ type: Type.String() })),
  early: Nullable(Type.Object({ best: Nullable(Type.Number()), bestStep: Count(), bad: Count(), stopped: Type.Boolean() })),
  evals: Type.Array(EvalRecordSchema),
  epochs: Type.Array(EpochRecordSchema),
  fingerprint: RunFingerprintSchema,
});

// The compile-time guard named above.
const assignable: (state: Static<typeof LoopStateSchema>) => LoopState = (state) => state;
void assignable;

/** The loop state of a checkpoint, checked (ERR_CHECKPOINT_FORMAT naming the field). */
export function parseLoopState(raw: unknown, place: Place): LoopState {
  return parse(LoopStateSchema, raw, place);
}
