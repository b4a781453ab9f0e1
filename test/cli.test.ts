/** The `eigenlorax` command, run as a child process the way a user runs it. */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { eigenlorax as runCli } from './helpers/cli.js';

const packageVersion = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

const eigenlorax = (args: string[], env: NodeJS.ProcessEnv = process.env) => runCli(args, { env, timeout: 30_000 });

test('--version and -v print the package.json version', async (t) => {
  t.regex(packageVersion, /^\d+\.\d+\.\d+/);
  for (const flag of ['--version', '-v']) {
    const r = await eigenlorax([flag]);
    t.is(r.code, 0, flag);
    t.is(r.stdout, `${packageVersion}\n`, flag);
    t.is(r.stderr, '', flag);
  }
});

test('--help, -h, help and no arguments print the usage', async (t) => {
  for (const args of [['--help'], ['-h'], ['help'], []]) {
    const r = await eigenlorax(args);
    const what = JSON.stringify(args);
    t.is(r.code, 0, what);
    t.regex(r.stdout, /eigenlorax/, what);
    t.regex(r.stdout, /Usage:/, what);
    t.regex(r.stdout, /info \[--json\]/, what);
    t.true(r.stdout.includes(packageVersion), what);
    t.is(r.stderr, '', what);
  }
});

test('info --json prints the build facts as JSON', async (t) => {
  const r = await eigenlorax(['info', '--json']);
  t.is(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout) as Record<string, unknown>;
  t.is(info.eigen, '3.4.0');
  t.is(typeof info.openmp, 'boolean');
  t.is(info.version, packageVersion);
  t.true(Number.isInteger(info.threads) && (info.threads as number) >= 1, `threads ${String(info.threads)}`);
  t.true(Number.isInteger(info.hardwareThreads) && (info.hardwareThreads as number) >= 1);
  t.true(Array.isArray(info.backends) && (info.backends as unknown[]).includes('cpu'));
  t.is(typeof info.simd, 'string');
  t.is(typeof info.addonPath, 'string');
});

test('info without --json prints one line per fact', async (t) => {
  const r = await eigenlorax(['info']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^eigen\s+3\.4\.0$/m);
  t.regex(r.stdout, /^openmp\s+(true|false)$/m);
  t.regex(r.stdout, new RegExp(`^version\\s+${packageVersion.replace(/\./g, '\\.')}$`, 'm'));
});

test('an unknown command exits with code 2 and explains on stderr', async (t) => {
  for (const args of [['frobnicate'], ['info', 'extra']]) {
    const r = await eigenlorax(args);
    const what = JSON.stringify(args);
    t.is(r.code, 2, what);
    t.is(r.stdout, '', what);
    t.regex(r.stderr, /unknown command/, what);
    t.true(r.stderr.includes(args.join(' ')), what);
    t.regex(r.stderr, /Usage:/, what);
  }
});

test('an unknown option exits with code 2 and explains on stderr', async (t) => {
  const r = await eigenlorax(['--frobnicate']);
  t.is(r.code, 2);
  t.is(r.stdout, '');
  t.regex(r.stderr, /frobnicate/);
});

test('without the native addon, --version still works and info fails with ERR_NATIVE_UNAVAILABLE', async (t) => {
  const env = { ...process.env, EIGENLORAX_ADDON: '/nonexistent/eigenlorax.node' };
  const version = await eigenlorax(['--version'], env);
  t.is(version.code, 0);
  t.is(version.stdout, `${packageVersion}\n`);
  const info = await eigenlorax(['info', '--json'], env);
  t.is(info.code, 1);
  t.is(info.stdout, '');
  t.regex(info.stderr, /ERR_NATIVE_UNAVAILABLE/);
  t.regex(info.stderr, /nonexistent/);
});
