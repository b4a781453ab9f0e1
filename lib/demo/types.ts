/**
 * The demo's options and results (what runDemo takes and returns, what report.ts writes),
 * apart from run.ts so that the report does not import the experiment.
 */
import type { ImageTransform } from '../data/transforms.js';
import type { ProgressBar } from '../progress.js';
import type { DemoSettings } from './settings.js';

export interface DemoOptions {
  /** Results folder (created; default `eigenlorax-demo` in the current folder). */
  out?: string;
  /**
   * Cache folder: the Fashion-MNIST binary cache and, under `demo/`, the base weights and
   * the zoo adapters. Default: `$EIGENLORAX_CACHE_DIR` or `.eigenlorax-cache`.
   */
  cacheDir?: string;
  /** Seed of everything: data split, initialisations, shuffling, subspace (default 0). */
  seed?: number;
  /** The small version (default false). */
  quick?: boolean;
  /** Settings instead of the full or quick presets. */
  settings?: DemoSettings;
  /** The `fashion-mnist` package folder (default: resolved as loadFashionMnist does). */
  packageDir?: string;
  /** Progress lines (default: none). */
  onLog?: (line: string) => void;
  /** A bar for the base's and the zoo's training (default: none); `onLog` lines are best printed with its `log`. */
  progress?: ProgressBar;
  /** Stops after the current training step; runDemo then rejects with the signal's reason. */
  signal?: AbortSignal;
}

export type MethodId = 'lora' | 'eigenlora' | 'eigenlorax' | 'base';

export interface CurvePoint {
  step: number;
  accuracy: number;
  loss: number;
}

export interface MethodResult {
  method: MethodId;
  /** `(a) LoRA r=8`, ... */
  label: string;
  /** Trainable scalars. */
  trainable: number;
  /** How `trainable` follows from the shapes, e.g. `r (d_in + d_out) summed over layers`. */
  trainableFormula: string;
  /** Accuracy on the held-out task's test images after training: the mean over the repeats. */
  accuracy: number;
  /** Sample standard deviation of the accuracy over the repeats (0 for one run). */
  accuracySd: number;
  /** The accuracy of each repeat. */
  accuracies: number[];
  /** Mean test loss after training. */
  loss: number;
  /** Training runs averaged (different seeds of initialisation and shuffling). */
  repeats: number;
  /** AdamW learning rate (null for the base). */
  lr: number | null;
  steps: number;
  /** Wall time of the training updates (evaluations of the curve excluded), seconds, mean over the repeats. */
  trainSeconds: number;
  /** trainSeconds of each repeat. */
  runSeconds: number[];
  /** Wall time of the whole training call, curve evaluations included. */
  totalSeconds: number;
  samplesPerSecond: number;
  /** Mean wall time of one update, milliseconds. */
  msPerStep: number;
  /** First evaluated update at which the curve accuracy reached 95% of its final value (0: already at the start). */
  stepsTo95: number | null;
  /** Accuracy and loss on the curve images, every `evalEvery` updates (step 0 = before training), mean over the repeats. */
  curve: CurvePoint[];
  /** Mean training loss over each window of `evalEvery` updates, at the window's last update. */
  trainLoss: Array<{ step: number; loss: number }>;
}

export interface HeldOutResult {
  name: string;
  transform: ImageTransform;
  range: 'in' | 'out';
  methods: MethodResult[];
}

export interface ZooTaskResult {
  name: string;
  transform: ImageTransform;
  /** The zoo LoRA's accuracy on its own task's test images. */
  accuracy: number;
  /** The base model's accuracy on the same images. */
  baseAccuracy: number;
  /** Seconds it took to train (this run or, when loaded, the run that trained it). */
  trainSeconds: number;
  /** Loaded from the cache in this run. */
  cached: boolean;
  /** The PEFT adapter folder. */
  adapter: string;
}

export interface ZeroShotResult {
  task: string;
  /** The zoo LoRA's accuracy on its own task. */
  original: number;
  /** The adapter rebuilt from its coefficients on the subspace. */
  reconstructed: number;
  base: number;
  /** reconstructed / original. */
  kept: number;
  /** (reconstructed - base) / (original - base): the share of the LoRA's gain over the base that is kept. */
  gainKept: number;
  /** ||dW - dW_hat||_F / ||dW||_F over the adapter. */
  relativeError: number;
  /** Coefficient scalars per adapter, against the LoRA's. */
  coefficients: number;
  loraParameters: number;
}

export interface TargetResult {
  id: string;
  description: string;
  met: boolean;
  detail: string;
}

export interface DemoResults {
  version: string;
  seed: number;
  quick: boolean;
  settings: DemoSettings;
  machine: { cpus: number; threads: number; node: string; platform: string };
  cache: { dir: string; base: 'trained' | 'loaded'; zooTrained: number; zooLoaded: number };
  data: { train: number; test: number; cacheFile: string };
  timings: { totalSeconds: number; dataSeconds: number; baseSeconds: number; zooSeconds: number; subspaceSeconds: number; heldOutSeconds: number; zeroShotSeconds: number };
  base: {
    layers: number[];
    activation: string;
    parameters: number;
    /** Accuracy on the upright test images. */
    accuracy: number;
    trainSeconds: number;
    cached: boolean;
    file: string;
  };
  zoo: ZooTaskResult[];
  subspace: {
    id: string;
    components: number;
    stacking: string;
    weighting: string | null;
    modules: Array<{ module: string; dIn: number; dOut: number; kA: number; kB: number; explainedA: number; explainedB: number }>;
    /** Mean relative error of the zoo adapters' dW, in-sample. */
    inSampleError: number;
    seconds: number;
  };
  heldOut: HeldOutResult[];
  zeroShot: ZeroShotResult[];
  targets: TargetResult[];
  /** Files written to the results folder (names relative to it). */
  files: string[];
  out: string;
  /** The served-model folder (`<out>/serve`: base, subspace, the zoo's coefficients), for `eigenlorax serve`. */
  serve: string;
}
