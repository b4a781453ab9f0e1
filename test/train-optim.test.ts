/**
 * Optimisers against hand computations of PyTorch's update rules (Adam, AdamW, SGD with
 * momentum and Nesterov), learning-rate schedules' values, gradient clipping, and state
 * save/restore.
 */
import test from 'ava';
import {
  Adam,
  AdamW,
  clipGradNorm,
  ConstantSchedule,
  CosineSchedule,
  createOptimizer,
  createSchedule,
  gradNorm,
  ReduceOnPlateau,
  SGD,
  type Parameter,
} from '../lib/train/index.js';

function param(name: string, values: number[], grads: number[]): Parameter {
  return { name, shape: [values.length], data: Float32Array.from(values), grad: Float32Array.from(grads) };
}

function close(t: { true: (v: boolean, m?: string) => void }, actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what: string) {
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i] as number;
    const e = expected[i] as number;
    t.true(Math.abs(a - e) <= tol * Math.max(1, Math.abs(e)), `${what}[${i}]: ${a} vs ${e}`);
  }
}

/** Adam by hand, in f64, for one tensor over a list of gradients. */
function handAdam(p0: number[], grads: number[][], lr: number, b1: number, b2: number, eps: number, wd: number, decoupled: boolean): number[] {
  const p = [...p0];
  const m = p.map(() => 0);
  const v = p.map(() => 0);
  grads.forEach((g, k) => {
    const t = k + 1;
    for (let i = 0; i < p.length; i++) {
      let gi = g[i] as number;
      if (decoupled) p[i] = (p[i] as number) * (1 - lr * wd);
      else gi += wd * (p[i] as number);
      m[i] = b1 * (m[i] as number) + (1 - b1) * gi;
      v[i] = b2 * (v[i] as number) + (1 - b2) * gi * gi;
      const mHat = (m[i] as number) / (1 - b1 ** t);
      const vHat = (v[i] as number) / (1 - b2 ** t);
      p[i] = (p[i] as number) - (lr * mHat) / (Math.sqrt(vHat) + eps);
    }
  });
  return p;
}

test('Adam: one step against a hand computation (bias-corrected: p - lr g / (|g| + eps))', (t) => {
  const p = param('w', [1, -2, 0.5, 0], [0.1, -0.2, 0.3, 0]);
  const opt = new Adam({ lr: 0.01 });
  opt.step([p]);
  // After one step m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps).
  const expected = [1 - (0.01 * 0.1) / (0.1 + 1e-8), -2 + (0.01 * 0.2) / (0.2 + 1e-8), 0.5 - (0.01 * 0.3) / (0.3 + 1e-8), 0];
  close(t, p.data, expected, 1e-7, 'p');
  t.is(opt.stepCount, 1);
  const state = opt.state();
  close(t, state.tensors.get('w.exp_avg') as Float32Array, [0.01, -0.02, 0.03, 0], 1e-7, 'exp_avg');
  close(t, state.tensors.get('w.exp_avg_sq') as Float32Array, [1e-5, 4e-5, 9e-5, 0], 1e-7, 'exp_avg_sq');
});

test('AdamW: one step against a hand computation (p (1 - lr wd) - lr g / (|g| + eps))', (t) => {
  const p = param('w', [1, -2, 0.5], [0.1, -0.2, 0.3]);
  new AdamW({ lr: 0.01, weightDecay: 0.1 }).step([p]);
  const decay = 1 - 0.01 * 0.1;
  const expected = [1 * decay - (0.01 * 0.1) / (0.1 + 1e-8), -2 * decay + (0.01 * 0.2) / (0.2 + 1e-8), 0.5 * decay - (0.01 * 0.3) / (0.3 + 1e-8)];
  close(t, p.data, expected, 1e-7, 'p');
  // Adam with the same weight decay adds wd p to the gradient instead: after one step the
  // update is still lr sign(g + wd p).
  const q = param('w', [1, -2, 0.5], [0.1, -0.2, 0.3]);
  new Adam({ lr: 0.01, weightDecay: 0.1 }).step([q]);
  close(t, q.data, [1 - 0.01, -2 + 0.01, 0.5 - 0.01], 1e-6, 'q');
});

test('Adam (L2 weight decay) and AdamW (decoupled): three steps against the hand computation', (t) => {
  const grads = [
    [0.3, -0.1, 0.05],
    [-0.2, 0.4, 0.05],
    [0.1, 0.1, -0.3],
  ];
  const p0 = [0.7, -1.2, 2];
  for (const [Kind, decoupled] of [
    [Adam, false],
    [AdamW, true],
  ] as const) {
    const p = param('w', p0, [0, 0, 0]);
    const opt = new Kind({ lr: 0.05, betas: [0.8, 0.95], eps: 1e-6, weightDecay: 0.1 });
    for (const g of grads) {
      p.grad.set(g);
      opt.step([p]);
    }
    close(t, p.data, handAdam(p0, grads, 0.05, 0.8, 0.95, 1e-6, 0.1, decoupled), 2e-6, Kind.name);
  }
  t.is(new AdamW().weightDecay, 0.01, 'AdamW default weight decay as PyTorch');
  t.is(new Adam().weightDecay, 0);
  t.is(new Adam().baseLr, 1e-3);
});

test('SGD: plain, momentum (buffer starts as the gradient), dampening, Nesterov, weight decay', (t) => {
  const grads = [
    [1, -2],
    [0.5, 0.5],
    [-1, 0.25],
  ];
  const run = (options: ConstructorParameters<typeof SGD>[0]) => {
    const p = param('w', [1, 1], [0, 0]);
    const opt = new SGD(options);
    for (const g of grads) {
      p.grad.set(g);
      opt.step([p]);
    }
    return [...p.data];
  };
  const hand = (lr: number, mu: number, damp: number, nesterov: boolean, wd: number) => {
    const p = [1, 1];
    let buf: number[] | null = null;
    for (const g of grads) {
      const d = g.map((gi, i) => gi + wd * (p[i] as number));
      if (mu !== 0) {
        buf = buf === null ? [...d] : buf.map((b, i) => mu * b + (1 - damp) * (d[i] as number));
        const b = buf;
        const step = nesterov ? d.map((di, i) => di + mu * (b[i] as number)) : b;
        step.forEach((s, i) => (p[i] = (p[i] as number) - lr * s));
      } else {
        d.forEach((s, i) => (p[i] = (p[i] as number) - lr * s));
      }
    }
    return p;
  };
  close(t, run({ lr: 0.1 }), hand(0.1, 0, 0, false, 0), 1e-6, 'plain');
  close(t, run({ lr: 0.1, momentum: 0.9 }), hand(0.1, 0.9, 0, false, 0), 1e-6, 'momentum');
  close(t, run({ lr: 0.1, momentum: 0.9, dampening: 0.5 }), hand(0.1, 0.9, 0.5, false, 0), 1e-6, 'dampening');
  close(t, run({ lr: 0.1, momentum: 0.9, nesterov: true }), hand(0.1, 0.9, 0, true, 0), 1e-6, 'nesterov');
  close(t, run({ lr: 0.1, momentum: 0.5, weightDecay: 0.01 }), hand(0.1, 0.5, 0, false, 0.01), 1e-6, 'weight decay');
  // Momentum 0.9 by hand: buf = g1 = [1, -2] -> p = [0.9, 1.2]; buf = [1.4, -1.3] -> p = [0.76, 1.33];
  // buf = [0.26, -0.92] -> p = [0.734, 1.422].
  close(t, run({ lr: 0.1, momentum: 0.9 }), [0.734, 1.422], 1e-6, 'momentum by hand');
  t.throws(() => new SGD({ lr: 0.1, nesterov: true }), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => new SGD({ lr: -1 }), { code: 'ERR_INVALID_ARGUMENT' });
});

test('optimiser state restores exactly: a restored optimiser continues bit for bit', (t) => {
  const g1 = [0.3, -0.7, 0.2];
  const g2 = [-0.1, 0.2, 0.9];
  for (const make of [() => new AdamW({ lr: 0.01 }), () => new SGD({ lr: 0.1, momentum: 0.9 })]) {
    const a = param('w', [1, 2, 3], g1);
    const optA = make();
    optA.step([a]);
    const saved = optA.state();
    const b = param('w', [...a.data], g2);
    const optB = make();
    optB.loadState(saved);
    a.grad.set(g2);
    optA.step([a]);
    optB.step([b]);
    t.deepEqual(b.data, a.data);
    t.is(optB.stepCount, 2);
  }
  const adam = new Adam({ lr: 0.01 });
  t.throws(() => adam.loadState(new SGD({ lr: 0.01 }).state()), { code: 'ERR_CHECKPOINT_MISMATCH' });
  t.throws(() => adam.loadState(new Adam({ lr: 0.02 }).state()), { code: 'ERR_CHECKPOINT_MISMATCH' });
});

test('createOptimizer from specs', (t) => {
  t.true(createOptimizer({ type: 'sgd', lr: 0.1, momentum: 0.9 }) instanceof SGD);
  t.true(createOptimizer({ type: 'adam', lr: 0.1 }) instanceof Adam);
  const w = createOptimizer({ type: 'adamw', lr: 0.1, weightDecay: 0 });
  t.true(w instanceof AdamW);
  t.is((w as AdamW).weightDecay, 0);
  t.throws(() => createOptimizer({ type: 'rmsprop' } as never), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => createOptimizer({ type: 'adam', lr: 0.1, momentum: 0.9 } as never), { code: 'ERR_INVALID_ARGUMENT' });
});

test('cosine schedule with linear warm-up: values (transformers semantics) and the floor', (t) => {
  const s = new CosineSchedule({ warmupSteps: 10, totalSteps: 110 });
  const base = 0.5;
  t.is(s.lrAt(0, base), 0);
  t.is(s.lrAt(5, base), 0.25);
  t.is(s.lrAt(10, base), 0.5);
  t.true(Math.abs(s.lrAt(60, base) - 0.25) < 1e-12, 'half way through the decay');
  t.true(Math.abs(s.lrAt(35, base) - 0.5 * 0.5 * (1 + Math.cos(Math.PI / 4))) < 1e-12);
  t.is(s.lrAt(110, base), 0);
  t.is(s.lrAt(500, base), 0);
  const floor = new CosineSchedule({ warmupSteps: 0, totalSteps: 100, minLr: 0.1 });
  t.is(floor.lrAt(0, 1), 1);
  t.true(Math.abs(floor.lrAt(50, 1) - 0.55) < 1e-12);
  t.true(Math.abs(floor.lrAt(100, 1) - 0.1) < 1e-12);
  t.true(Math.abs(floor.lrAt(1000, 1) - 0.1) < 1e-12);
  for (let k = 11; k < 110; k++) t.true(s.lrAt(k, base) < s.lrAt(k - 1, base), 'decreasing after warm-up');
  t.throws(() => new CosineSchedule().lrAt(3, 1), { code: 'ERR_INVALID_ARGUMENT' });
  t.is(new ConstantSchedule().lrAt(1000, 0.3), 0.3);
  t.is(createSchedule(undefined).type, 'constant');
  t.is(createSchedule({ type: 'cosine', warmupSteps: 3 }).type, 'cosine');
});

test('reduce on plateau: PyTorch semantics (patience, threshold, cooldown, floor)', (t) => {
  const s = new ReduceOnPlateau({ patience: 2, factor: 0.5, cooldown: 1, minLr: 0.02 });
  const lrs: number[] = [];
  for (const metric of [1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]) {
    lrs.push(s.lrAt(0, 0.1));
    s.observe(metric);
  }
  // Improvements at 1 and 0.9; then bad evals 1, 2, 3 -> reduce (0.05); cooldown eats one,
  // then 1, 2, 3 -> 0.025; then 1, 2, 3 -> floor 0.02.
  t.deepEqual(
    lrs.map((v) => Math.round(v * 1e6) / 1e6),
    [0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.025],
  );
  t.is(s.lrAt(0, 0.1), 0.02);
  const max = new ReduceOnPlateau({ mode: 'max', patience: 0, factor: 0.1 });
  max.lrAt(0, 1);
  max.observe(0.5);
  max.observe(0.50001); // within the relative threshold 1e-4: not an improvement
  t.true(Math.abs(max.lrAt(0, 1) - 0.1) < 1e-12);
  const restored = new ReduceOnPlateau({ patience: 2, factor: 0.5, cooldown: 1, minLr: 0.02 });
  restored.loadState(JSON.parse(JSON.stringify(s.state())));
  t.deepEqual(restored.state(), s.state());
});

test('gradient clipping by global norm (torch clip_grad_norm_)', (t) => {
  const a = param('a', [0, 0], [3, 0]);
  const b = param('b', [0], [4]);
  t.is(gradNorm([a, b]), 5);
  const norm = clipGradNorm([a, b], 1);
  t.is(norm, 5);
  const coef = 1 / (5 + 1e-6);
  close(t, a.grad, [3 * coef, 0], 1e-7, 'a');
  close(t, b.grad, [4 * coef], 1e-7, 'b');
  t.true(Math.abs(gradNorm([a, b]) - 1) < 1e-6);
  const c = param('c', [0], [0.5]);
  t.is(clipGradNorm([c], 1), 0.5);
  t.deepEqual([...c.grad], [0.5], 'unchanged below the limit');
  const nan = param('n', [0, 0], [Number.NaN, 1]);
  t.true(Number.isNaN(clipGradNorm([nan], 1)));
  t.throws(() => clipGradNorm([c], 0), { code: 'ERR_INVALID_ARGUMENT' });
});
