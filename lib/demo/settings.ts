/**
 * The demo's settings: the full experiment and the quick one (`--quick`, used by the
 * tests). Everything that changes a cached artefact (base weights, zoo adapters) goes into
 * its cache key, so a changed setting trains again instead of reusing a stale file.
 */
import type { ImageTransform } from '../data/transforms.js';

export interface DemoTask {
  /** A short file-safe name: `rot+20`, `rot+30-scale0.8`. */
  name: string;
  transform: ImageTransform;
}

export interface HeldOutTask extends DemoTask {
  /** Inside the zoo's range of transforms, or outside it. */
  range: 'in' | 'out';
}

export interface MethodBudget {
  /** AdamW learning rate (weight decay 0, cosine decay after a 10% warm-up). */
  lr: number;
}

export interface DemoSettings {
  /** Hidden widths of the MLP (784 -> hidden... -> 10). */
  hidden: number[];
  activation: 'relu' | 'gelu';
  /** Fashion-MNIST test images held back (the rest is the training pool). */
  testSize: number;
  base: { epochs: number; trainSize: number; batchSize: number; lr: number };
  zoo: {
    tasks: DemoTask[];
    rank: number;
    epochs: number;
    /** Training images per zoo task (a different slice of the pool for each task). */
    trainSize: number;
    batchSize: number;
    lr: number;
    /** Test images per zoo task for the accuracies (original LoRA, reconstruction, base). */
    evalSize: number;
  };
  subspace: { components: number; stacking: 'canonical' | 'raw'; weighting: 'equal' | 'scale' };
  heldOut: {
    tasks: HeldOutTask[];
    /** Training images per held-out task. */
    trainSize: number;
    epochs: number;
    batchSize: number;
    /** Evaluate the curve set every this many updates. */
    evalEvery: number;
    /** Test images for the curves (a prefix of the test set). */
    curveSize: number;
    /** Test images for the final accuracy. */
    evalSize: number;
    /** Training runs per method and task (seeds of initialisation and shuffling), averaged. */
    repeats: number;
    /** LoRA rank of (a) and rank of alpha, beta for (b) and (c). */
    rank: number;
    /** Augmented directions per side for (c) (EigenLoRAx). */
    augment: number;
    lr: { lora: number; eigenlora: number; eigenlorax: number };
  };
}

const rot = (deg: number): DemoTask => ({ name: `rot${deg >= 0 ? '+' : ''}${deg}`, transform: { rotate: deg } });

/**
 * The full experiment: a 784-256-256-10 ReLU MLP pretrained for 2 epochs on the upright
 * images; a zoo of 10 rotated versions of the task (-45 to +45 degrees); held-out rotations
 * between zoo rotations (in range) and far outside them or combined with a zoom and shift
 * (out of range).
 */
export const FULL_SETTINGS: DemoSettings = {
  hidden: [256, 256],
  activation: 'relu',
  testSize: 10_000,
  base: { epochs: 2, trainSize: 60_000, batchSize: 128, lr: 2e-3 },
  zoo: {
    tasks: [-45, -35, -25, -15, -5, 5, 15, 25, 35, 45].map(rot),
    rank: 8,
    epochs: 2,
    trainSize: 20_000,
    batchSize: 128,
    lr: 1e-2,
    evalSize: 10_000,
  },
  subspace: { components: 16, stacking: 'canonical', weighting: 'equal' },
  heldOut: {
    tasks: [
      { name: 'rot+20', transform: { rotate: 20 }, range: 'in' },
      { name: 'rot-30', transform: { rotate: -30 }, range: 'in' },
      { name: 'rot+90', transform: { rotate: 90 }, range: 'out' },
      { name: 'rot+30-zoom0.7-shift', transform: { rotate: 30, scale: 0.7, shift: [4, -3] }, range: 'out' },
    ],
    trainSize: 10_000,
    epochs: 2,
    batchSize: 128,
    evalEvery: 10,
    curveSize: 2_000,
    evalSize: 10_000,
    repeats: 3,
    rank: 8,
    augment: 64,
    lr: { lora: 3e-2, eigenlora: 1e-1, eigenlorax: 7e-2 },
  },
};

/** `--quick`: the same workflow, much smaller (about 10-20 s; the tests run it). */
export const QUICK_SETTINGS: DemoSettings = {
  hidden: [64, 64],
  activation: 'relu',
  testSize: 10_000,
  base: { epochs: 2, trainSize: 10_000, batchSize: 128, lr: 3e-3 },
  zoo: {
    tasks: [-40, -30, -20, -10, 10, 20, 30, 40].map(rot),
    rank: 8,
    epochs: 2,
    trainSize: 4_000,
    batchSize: 64,
    lr: 1e-2,
    evalSize: 1_000,
  },
  subspace: { components: 8, stacking: 'canonical', weighting: 'equal' },
  heldOut: {
    tasks: [
      { name: 'rot+25', transform: { rotate: 25 }, range: 'in' },
      { name: 'rot+90', transform: { rotate: 90 }, range: 'out' },
    ],
    trainSize: 3_000,
    epochs: 1,
    batchSize: 64,
    evalEvery: 4,
    curveSize: 500,
    evalSize: 1_000,
    repeats: 1,
    rank: 8,
    augment: 16,
    lr: { lora: 2e-2, eigenlora: 1e-1, eigenlorax: 1e-1 },
  },
};
