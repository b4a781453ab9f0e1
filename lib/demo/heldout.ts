/** Step 5 of runDemo: the held-out tasks, (a) to (c) trained with the same budget, and (d) the base model. */
import type { Dataset } from '../data/dataset.js';
import { transformDataset } from '../data/transforms.js';
import type { Subspace } from '../subspace/types.js';
import { eigenLoraModel, loraModel, type ModuleComponents } from '../train/adapt.js';
import { augmentComponents, Linear } from '../train/layers.js';
import type { Sequential } from '../train/model.js';
import { seconds, secondsText, takeRows, TestSets, windowStarts, type Run } from './context.js';
import type { DemoSettings } from './settings.js';
import { trainMethod, type MethodSpec } from './training.js';
import type { CurvePoint, HeldOutResult, MethodResult } from './types.js';

/** The held-out methods' components: the subspace's (b), and augmented by P random orthogonal directions (c). */
async function heldOutComponents(
  subspace: Subspace,
  h: DemoSettings['heldOut'],
  seed: number,
): Promise<{ components: Map<string, ModuleComponents>; augmented: Map<string, ModuleComponents> }> {
  const components = new Map<string, ModuleComponents>();
  const augmented = new Map<string, ModuleComponents>();
  for (const [name, m] of subspace.modules) {
    components.set(name, { componentsA: m.componentsA, componentsB: m.componentsB });
    augmented.set(name, {
      componentsA: await augmentComponents(m.componentsA, Math.min(h.augment, m.dIn - m.kA), { seed: seed * 1024 + 7 }),
      componentsB: await augmentComponents(m.componentsB, Math.min(h.augment, m.dOut - m.kB), { seed: seed * 1024 + 8 }),
    });
  }
  return { components, augmented };
}

/** The trained methods (a) to (c), each with its trainable-parameter count from the shapes. */
function methodSpecs(settings: DemoSettings, base: Sequential, components: Map<string, ModuleComponents>, augmented: Map<string, ModuleComponents>): MethodSpec[] {
  const h = settings.heldOut;
  const linears = base.layers.filter((l): l is Linear => l instanceof Linear);
  const loraTrainable = linears.reduce((s, l) => s + h.rank * (l.inFeatures + l.outFeatures), 0);
  const eigenTrainable = (c: Map<string, ModuleComponents>) => [...c.values()].reduce((s, m) => s + h.rank * (m.componentsA.cols + m.componentsB.cols), 0);
  return [
    {
      id: 'lora',
      label: `(a) LoRA r=${h.rank}`,
      formula: 'sum over layers of r (d_in + d_out)',
      lr: h.lr.lora,
      make: (k) => loraModel(base, { rank: h.rank, seed: k }),
      trainable: loraTrainable,
    },
    {
      id: 'eigenlora',
      label: `(b) EigenLoRA K=${settings.subspace.components}`,
      formula: 'sum over layers of r (K_A + K_B)',
      lr: h.lr.eigenlora,
      make: (k) => eigenLoraModel(base, { components, rank: h.rank, init: 'zero-beta', seed: k }),
      trainable: eigenTrainable(components),
    },
    {
      id: 'eigenlorax',
      label: `(c) EigenLoRAx K=${settings.subspace.components}+P=${h.augment}`,
      formula: 'sum over layers of r (K_A + P_A + K_B + P_B)',
      lr: h.lr.eigenlorax,
      make: (k) => eigenLoraModel(base, { components: augmented, rank: h.rank, init: 'zero-beta', seed: k }),
      trainable: eigenTrainable(augmented),
    },
  ];
}

/** (d) the base model: nothing trained, its accuracy a flat curve. */
function baseMethod(baseFinal: { accuracy?: number | null; loss: number }, start: CurvePoint, lastStep: number): MethodResult {
  return {
    method: 'base',
    label: '(d) base model',
    trainable: 0,
    trainableFormula: 'nothing is trained',
    accuracy: baseFinal.accuracy ?? 0,
    accuracySd: 0,
    accuracies: [baseFinal.accuracy ?? 0],
    loss: baseFinal.loss,
    repeats: 1,
    lr: null,
    steps: 0,
    trainSeconds: 0,
    runSeconds: [],
    totalSeconds: 0,
    samplesPerSecond: 0,
    msPerStep: 0,
    stepsTo95: null,
    curve: [start, { ...start, step: lastStep }],
    trainLoss: [],
  };
}

/** 5. Held-out tasks: (a) to (c) trained with the same budget on each, and (d) the base model. */
export async function trainHeldOut(run: Run, pool: Dataset, base: Sequential, subspace: Subspace, testSets: TestSets): Promise<{ heldOut: HeldOutResult[]; heldOutSeconds: number }> {
  const { settings, seed, log, signal, checkAbort } = run;
  const t = performance.now();
  const h = settings.heldOut;
  const { components, augmented } = await heldOutComponents(subspace, h, seed);
  const specs = methodSpecs(settings, base, components, augmented);
  const heldStarts = windowStarts(pool.inputs.rows, h.trainSize, h.tasks.length + 1, 1);
  const heldOut: HeldOutResult[] = [];
  for (const [ti, task] of h.tasks.entries()) {
    checkAbort();
    const train = await transformDataset(takeRows(pool, heldStarts[ti] as number, h.trainSize), task.transform);
    const evalSet = await testSets.of(task, h.evalSize);
    const curveSet = takeRows(evalSet, 0, Math.min(h.curveSize, evalSet.inputs.rows));
    const runSeed = seed * 1024 + 500 + ti;
    const baseFinal = await base.evaluate(evalSet);
    const baseCurve0 = await base.evaluate(curveSet);
    const methods: MethodResult[] = [];
    for (const spec of specs) {
      checkAbort();
      methods.push(await trainMethod(spec, train, curveSet, evalSet, h, runSeed, signal));
    }
    const start: CurvePoint = { step: 0, accuracy: baseCurve0.accuracy ?? 0, loss: baseCurve0.loss };
    const lastStep = Math.max(...methods.map((m) => m.steps));
    methods.push(baseMethod(baseFinal, start, lastStep));
    heldOut.push({ name: task.name, transform: task.transform, range: task.range, methods });
    log(
      `held-out ${task.name} (${task.range} range): ` +
        methods.map((m) => `${m.label} ${(100 * m.accuracy).toFixed(2)}%${m.method === 'base' ? '' : ` in ${secondsText(m.trainSeconds)}`}`).join(', '),
    );
  }
  const heldOutSeconds = seconds(t);
  return { heldOut, heldOutSeconds };
}
