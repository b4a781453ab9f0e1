/** A LoRA module built in memory (a combination, a reconstruction): f32 factors, no source keys. */
import type { Matrix } from '../matrix.js';
import type { LoraLayout, LoraModule } from './types.js';

/** What a built module takes from the module it stands for. */
export interface ModuleShape {
  name: string;
  dIn: number;
  dOut: number;
  layout: LoraLayout;
  convKernel: readonly number[] | null;
  fanInFanOut: boolean;
}

/**
 * The module with factors `A` (`r x d_in`) and `B` (`d_out x r`), `lora_alpha = alpha`
 * and the scale it implies (`alpha / sqrt(r)` with rsLoRA, else `alpha / r`); the shapes
 * as the file would store them (a conv module's A keeps its kernel, its B is 1x1).
 */
export function f32LoraModule(shape: ModuleShape, A: Matrix, B: Matrix, alpha: number, rslora: boolean): LoraModule {
  const r = A.rows;
  const kernel = shape.convKernel;
  return {
    name: shape.name,
    A,
    B,
    rank: r,
    alpha,
    scale: rslora ? alpha / Math.sqrt(r) : alpha / r,
    rslora,
    layout: shape.layout,
    ...(kernel ? { convKernel: [...kernel] } : {}),
    shapes:
      shape.layout === 'conv' && kernel
        ? { A: [r, shape.dIn / kernel.reduce((a, b) => a * b, 1), ...kernel], B: [shape.dOut, r, ...kernel.map(() => 1)] }
        : { A: [r, shape.dIn], B: [shape.dOut, r] },
    inFeatures: shape.dIn,
    outFeatures: shape.dOut,
    fanInFanOut: shape.fanInFanOut,
    keys: { A: '', B: '' },
    dtypes: { A: 'F32', B: 'F32' },
  };
}
