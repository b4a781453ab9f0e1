/**
 * Memory safety of in-flight calls (issue 13, defect 1): detaching, transferring, shrinking
 * or collecting a buffer while a native call uses it gives the right result (inputs are the
 * job's own copies) or ERR_DETACHED_BUFFER (an output that is gone or changed length when
 * the call ends), never a crash. Each scenario runs in a child process
 * (helpers/detach-scenarios.ts) so a crash fails its test; .ci/sanitize.sh runs this file
 * against the AddressSanitizer build, which reports any touch of freed memory.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { EigenLoraxError, matrix, rsvd, toFloat32 } from '../lib/index.js';
import { native } from '../lib/native.js';

const script = fileURLToPath(new URL('./helpers/detach-scenarios.js', import.meta.url));

function runScenario(name: string): Promise<{ status: number | null; signal: string | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', script, name], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (status, signal) => resolve({ status, signal, stdout, stderr }));
  });
}

type Expect = 'same result' | 'ERR_DETACHED_BUFFER';
const cases: [string, Expect][] = [
  ['rsvd input resized to 0', 'same result'],
  ['rsvd input transferred and collected', 'same result'],
  ['rsvd input sent through a MessagePort', 'same result'],
  ['rsvd output U transferred and collected', 'ERR_DETACHED_BUFFER'],
  ['loraForward out transferred and collected', 'ERR_DETACHED_BUFFER'],
  ['loraForward out resized to 0', 'ERR_DETACHED_BUFFER'],
  ['loraForward out resized to 0 and back', 'same result'],
  ['loraForward input x transferred and collected', 'same result'],
  ['toFloat32 input transferred and collected', 'same result'],
  ['toFloat32 input resized to 0', 'same result'],
  ['toFloat32 of a SharedArrayBuffer', 'same result'],
];

for (const [name, expected] of cases) {
  test(`${name}: ${expected}, no crash`, async (t) => {
    const r = await runScenario(name);
    t.is(r.signal, null, `killed by ${r.signal}\n${r.stderr.slice(-4000)}`);
    t.is(r.status, 0, r.stderr.slice(-4000));
    const outcome = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}');
    if (expected === 'same result') t.deepEqual(outcome, { outcome: 'result', same: true });
    else {
      t.is(outcome.outcome, 'error');
      t.is(outcome.code, expected, outcome.message);
      t.regex(outcome.message, /detached|resized/);
    }
  });
}

test('the scenario list and the expectations name the same cases', async (t) => {
  const r = await runScenario('--list');
  t.deepEqual(JSON.parse(r.stdout), cases.map(([name]) => name));
});

// Defect 7: shapes and buffer kinds reported by the right code.
test('a zero-length array claiming 65536 x 65536 is a shape mismatch, not a detached buffer', async (t) => {
  const m = { rows: 65536, cols: 65536, data: new Float32Array(0) };
  const e = await t.throwsAsync(rsvd(m, { rank: 1 }), { instanceOf: EigenLoraxError });
  t.is(e?.code, 'ERR_SHAPE_MISMATCH');
  const n = await t.throwsAsync(async () =>
    native.rsvd({ matrix: m, rank: 1, oversample: 0, powerIters: 0, seed: 0, method: 'auto', U: matrix(1, 1), S: new Float32Array(1), V: matrix(1, 1) }),
  );
  t.is((n as EigenLoraxError).code, 'ERR_SHAPE_MISMATCH');
});

test('a detached matrix is still reported as detached', async (t) => {
  const data = new Float32Array(12);
  structuredClone(data.buffer, { transfer: [data.buffer] });
  const e = await t.throwsAsync(rsvd({ rows: 3, cols: 4, data }, { rank: 1 }), { instanceOf: EigenLoraxError });
  t.is(e?.code, 'ERR_DETACHED_BUFFER');
});

test('toFloat32 reads a SharedArrayBuffer (small, inline) and a detached input is a typed error', async (t) => {
  const shared = new Uint16Array(new SharedArrayBuffer(8));
  shared.set([0x3f80, 0x4000, 0xc040, 0]);
  t.deepEqual(Array.from(await toFloat32(shared, 'bf16')), [1, 2, -3, 0]);
  const words = new Uint16Array([0x3f80, 0x4000]);
  structuredClone(words.buffer, { transfer: [words.buffer] });
  const e = await t.throwsAsync(async () => native.convert({ src: words, from: 'bf16', dst: new Float32Array(2), to: 'f32' }));
  t.is((e as EigenLoraxError).code, 'ERR_DETACHED_BUFFER');
});
