/**
 * Kernel checks written in C++ (test/native/*_check.cpp), each against float64 on fresh
 * seeded inputs, run here with this run's seed:
 * - the rsvd's products of a large row-major matrix with a thin one (native/core/stack_products:
 *   AVX-512 kernels where compiled in, Eigen otherwise) at every shape class the kernels
 *   special-case, four buffer alignments and 1 and 2 threads, and (for the AVX-512 kernels)
 *   bits compared across alignments and thread counts;
 * - the build's column products (native/core/column_dots: Grams and loadings) at column
 *   counts around the tile and lengths that are not whole vectors, Grams exactly symmetric,
 *   and (AVX-512) an entry's bits the same whichever call computed it.
 * Built beside the cmake-js addon with EIGENLORAX_DEV (as `npm run build:native` builds);
 * skipped, saying why, elsewhere.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { buildInfo } from '../lib/index.js';
import { freshSeed } from './helpers/random.js';

const run = promisify(execFile);
const seed = freshSeed();
const buildDir = path.dirname(path.dirname(buildInfo().addonPath));

function nativeCheck(title: string, program: string, summary: RegExp): void {
  const checkProgram = path.join(buildDir, program);
  if (!existsSync(checkProgram)) {
    test(`${title}: skipped`, (t) => {
      t.log(`skipped: ${checkProgram} was not built (a node-gyp build, or a build without EIGENLORAX_DEV)`);
      t.pass();
    });
    return;
  }
  test(`${title} (seed ${seed})`, async (t) => {
    const result = await run(checkProgram, ['--seed', String(seed)]).then(
      ({ stdout }) => ({ code: 0, stdout }),
      (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: e.code ?? -1, stdout: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
    );
    t.is(result.code, 0, result.stdout);
    t.regex(result.stdout, summary);
    t.log(result.stdout.split('\n').filter((line) => line.startsWith('kernels') || line.startsWith('summary')).join('; '));
  });
}

nativeCheck(
  'stack products match float64 at every alignment and thread count, bit for bit across them',
  'eigenlorax_check_stack_products',
  /^summary: 0 of 3072 checks failed/m,
);
nativeCheck(
  'column products and Grams match float64, exactly symmetric, bit for bit whichever call computed them',
  'eigenlorax_check_column_dots',
  /^summary: 0 of [1-9]\d{4,} checks failed/m,
);
