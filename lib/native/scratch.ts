/**
 * The memory the native kernels keep from call to call on the compute thread (the build and
 * analyze kernels' stacks and the factors kept for projecting: about 0.5 GB at 256 adapters
 * of 7B-sized modules; rsvd's work matrices and packing buffers, at most 80 MiB) is reused
 * by the next call, and freed once none has run for a while: fresh memory costs page
 * faults on first touch (0.6 s a build of 256 x 8 such modules on the test VM), but an idle
 * process should not hold it.
 */
import * as ops from './ops.js';

/** Idle time after which the kept memory is freed. */
export const SCRATCH_RELEASE_AFTER_MS = 10_000;

let running = 0;
let timer: NodeJS.Timeout | null = null;

/** Runs an rsvd, build or analysis; when the last one in flight ends, schedules the release. */
export async function withScratch<T>(body: () => Promise<T>): Promise<T> {
  running++;
  if (timer !== null) {
    clearTimeout(timer);
    timer = null;
  }
  try {
    return await body();
  } finally {
    if (--running === 0) {
      timer = setTimeout(() => {
        timer = null;
        if (running === 0) ops.releaseScratch().catch(() => undefined);
      }, SCRATCH_RELEASE_AFTER_MS);
      timer.unref(); // never keeps the process alive
    }
  }
}
