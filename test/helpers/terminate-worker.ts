/**
 * Child-process script for async.test.ts: starts a worker thread, lets it begin a native
 * rsvd, terminates the worker while the job runs, and prints "survived" if this process
 * is still alive afterwards. Run in its own process so a crash cannot take the tests down.
 */
import { Worker } from 'node:worker_threads';

const libUrl = new URL('../../lib/index.js', import.meta.url).href;
const source = `
const { parentPort } = require('node:worker_threads');
import(${JSON.stringify(libUrl)}).then((lib) => {
  const a = lib.matrix(1000, 800);
  for (let i = 0; i < a.data.length; i++) a.data[i] = Math.sin(i * 0.37);
  void lib.rsvd(a, { rank: 10, method: 'randomized', powerIters: 20 });
  parentPort.postMessage('started');
});
`;

const worker = new Worker(source, { eval: true });
await new Promise((resolve) => worker.once('message', resolve));
await new Promise((resolve) => setTimeout(resolve, 20));
const exitCode = await worker.terminate();
await new Promise((resolve) => setTimeout(resolve, 500));
console.log(`survived (worker exit code ${exitCode})`);
