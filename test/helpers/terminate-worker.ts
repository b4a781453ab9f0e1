/**
 * Child-process script for async.test.ts: starts a worker thread, lets it begin native
 * work, terminates the worker while that work runs, and prints "survived" if this process
 * is still alive afterwards. Run in its own process so a crash cannot take the tests down.
 *
 *   node terminate-worker.js rsvd     one long rsvd (runs on the compute thread)
 *   node terminate-worker.js queued   six rsvds at once: one runs, five wait in the queue
 *   node terminate-worker.js files    a subspace build over adapter files (jobs that read
 *                                     files take a hop through libuv's pool first)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { basePeftConfig, peftTensors, writePeft } from './adapter-fixtures.js';

const libUrl = new URL('../../lib/index.js', import.meta.url).href;
const scenario = process.argv[2] ?? 'rsvd';

const start: Record<string, string> = {
  rsvd: `
    const a = lib.matrix(1000, 800);
    for (let i = 0; i < a.data.length; i++) a.data[i] = Math.sin(i * 0.37);
    void lib.rsvd(a, { rank: 10, method: 'randomized', powerIters: 20 });`,
  queued: `
    const a = lib.matrix(600, 500);
    for (let i = 0; i < a.data.length; i++) a.data[i] = Math.sin(i * 0.37);
    for (let j = 0; j < 6; j++) void lib.rsvd(a, { rank: 10, method: 'randomized', powerIters: 10 });`,
  files: `
    const adapters = await Promise.all(workerData.dirs.map((dir) => lib.openAdapter(dir)));
    void lib.buildSubspace(adapters, { components: 8, hashSources: false });`,
};
if (!(scenario in start)) throw new Error(`unknown scenario ${scenario}`);

const dirs: string[] = [];
const root = await mkdtemp(path.join(os.tmpdir(), 'eigenlorax-terminate-'));
if (scenario === 'files') {
  const modules = Array.from({ length: 4 }, (_, i) => ({ name: `model.layers.${i}.q_proj`, rank: 8, in: 384, out: 384 }));
  for (let i = 0; i < 8; i++) dirs.push((await writePeft(path.join(root, `a${i}`), peftTensors(modules), { ...basePeftConfig(), r: 8, lora_alpha: 8 })).dir);
}

const source = `
const { parentPort, workerData } = require('node:worker_threads');
import(${JSON.stringify(libUrl)}).then(async (lib) => {
  ${start[scenario]}
  parentPort.postMessage('started');
});
`;

const worker = new Worker(source, { eval: true, workerData: { dirs } });
await new Promise((resolve) => worker.once('message', resolve));
await new Promise((resolve) => setTimeout(resolve, scenario === 'files' ? 1 : 20));
const exitCode = await worker.terminate();
await new Promise((resolve) => setTimeout(resolve, 500));
await rm(root, { recursive: true, force: true });
console.log(`survived (worker exit code ${exitCode})`);
