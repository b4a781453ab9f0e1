/**
 * The command line as a whole: every command's own --help with examples, the exit-code
 * policy (2 for usage mistakes of every kind, 1 for failures), the flag parsers' messages,
 * `eigenlorax combine` end to end against combineAdapters on the same inputs, and the
 * completion script run in bash.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  buildSubspace,
  combineAdapters,
  loadAdapter,
  loadCoefficients,
  loadSubspace,
  saveAdapter,
  saveCoefficients,
  saveSubspace,
  type LoraAdapter,
} from '../lib/index.js';
import { UsageError, parseChoice, parseInteger, parseNumber } from '../lib/cli/options.js';
import { createProgram } from '../lib/cli/program.js';
import { eigenlorax } from './helpers/cli.js';
import { freshSeed } from './helpers/random.js';
import { tempDir } from './helpers/safetensors-fixtures.js';
import { memoryAdapter, plantedBases, plantedFactors } from './helpers/subspace-fixtures.js';

/** `run` over `items`, four child processes at a time (the machine may be busy). */
async function inBatches<T, R>(items: readonly T[], run: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = [];
  for (let i = 0; i < items.length; i += 4) results.push(...(await Promise.all(items.slice(i, i + 4).map(run))));
  return results;
}

const COMMANDS = ['info', 'devices', 'inspect', 'merge', 'build', 'gather', 'queue', 'worker', 'project', 'export', 'analyze', 'combine', 'extract', 'convert', 'demo', 'serve', 'completion'];

test('every command has its own --help (usage line, flags, examples); help <command> prints the same', async (t) => {
  t.deepEqual(
    createProgram()
      .commands.map((c) => c.name())
      .filter((n) => n !== 'help'),
    COMMANDS,
  );
  const results = await inBatches(COMMANDS, (name) => Promise.all([eigenlorax([name, '--help']), eigenlorax(['help', name])]));
  for (const [i, [help, viaHelp]] of results.entries()) {
    const name = COMMANDS[i]!;
    t.is(help.code, 0, `${name}: ${help.stderr}`);
    t.is(help.stderr, '', name);
    t.true(help.stdout.startsWith(`Usage: eigenlorax ${name} `), `${name}: ${help.stdout.slice(0, 80)}`);
    t.regex(help.stdout, /\nOptions:\n/, name);
    t.regex(help.stdout, new RegExp(`\\nExamples:\\n  \\$ (\\S+=\\S+ )?eigenlorax ${name}\\b`), name);
    t.regex(help.stdout, /-h, --help/, name);
    t.is(viaHelp.code, 0, name);
    t.is(viaHelp.stdout, help.stdout, `help ${name}`);
  }
  t.is((await eigenlorax(['merge', '-h'])).stdout, results[COMMANDS.indexOf('merge')]![0].stdout, 'merge -h');
  const root = await eigenlorax(['--help']);
  for (const name of COMMANDS) t.regex(root.stdout, new RegExp(`^  eigenlorax ${name} `, 'm'), name);
  t.regex(root.stdout, /Exit codes: 0 .*1 .*\n.*2 a usage mistake/);
});

test('--version wins wherever it is, as --help does', async (t) => {
  const r = await eigenlorax(['build', '--version']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^\d+\.\d+\.\d+\S*\n$/);
});

test('usage mistakes exit 2 with the message and the command\'s usage line: unknown flag, missing argument, bad number, bad choice', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['build', 'a', '-o', 'x', '--frobnicate'], /unknown option '--frobnicate'/],
    [['combine', '--method', 'cat', '-o', 'x'], /missing required argument 'adapters'/],
    [['combine', 'a', 'b', '-o', 'x'], /required option '--method <m>' not specified/],
    [['combine', 'a', 'b', '--method', 'svd', '--rank', '0', '-o', 'x'], /--rank expects an integer >= 1, not "0"/],
    [['combine', 'a', 'b', '--method', 'ties', '--density', '1.5', '-o', 'x'], /--density expects a fraction in \(0, 1\], not "1\.5"/],
    [['combine', 'a', 'b', '--method', 'ties', '-o', 'x'], /--method ties needs --density/],
    [['combine', 'a', 'b', '--method', 'cat', '--weights', '1', '-o', 'x'], /--weights has 1 values for 2 adapters/],
    [['combine', 'a', 'b', '--method', 'cat', '--weights', '1,x', '-o', 'x'], /--weights expects a finite number, not "x"/],
    [['combine', 'a', 'b', '--method', 'mean', '-o', 'x'], /--method must be one of linear, cat, svd/],
    [['combine', 'a', 'b', '--method', 'cat'], /combine needs -o <out>/],
    [['merge', '--base', 'b', '--adapter', 'a', '--scale', '2x', '-o', 'x'], /--scale expects a finite number, not "2x"/],
    [['serve', '--threads', '2000'], /--threads expects an integer from 1 to 1024, not "2000"/],
    [['demo', '--seed', '1e3'], /--seed expects an integer from 0 to 16777216/],
    [['export', 's', 'c', '-o', 'x', '--dtype', 'f8'], /--dtype must be one of F32, F16, BF16, not "f8"/],
    [['devices', 'extra'], /unknown command 'devices extra'/],
    [['help', 'frobnicate'], /unknown command 'frobnicate'/],
    [['build', 'a', '-o'], /option '-o, --output <dir>' argument missing/],
  ];
  const results = await inBatches(cases, ([args]) => eigenlorax(args));
  for (const [i, r] of results.entries()) {
    const [args, message] = cases[i]!;
    const what = args.join(' ');
    t.is(r.code, 2, `${what}: ${r.stderr}`);
    t.is(r.stdout, '', what);
    t.regex(r.stderr, /^eigenlorax: /, what);
    t.regex(r.stderr, message, what);
    t.regex(r.stderr, args[0] === 'help' ? /\n\nUsage:\n {2}eigenlorax --version/ : new RegExp(`\\n\\nUsage: eigenlorax ${args[0]} `), what);
    t.is(r.stderr.match(/^eigenlorax: /gm)?.length, 1, `${what}: one message`);
  }
  t.false(existsSync('x'), 'nothing written');
});

test('failures exit 1 with the message and the error code; with --json also as { error } on stdout', async (t) => {
  const dir = await tempDir(t);
  const missing = path.join(dir, 'no-such-adapter');
  const out = path.join(dir, 'out');
  const [text, json] = await Promise.all([
    eigenlorax(['combine', missing, missing, '--method', 'cat', '-o', out]),
    eigenlorax(['combine', missing, missing, '--method', 'cat', '-o', out, '--json']),
  ]);
  t.is(text.code, 1, text.stderr);
  t.regex(text.stderr, /^eigenlorax: .*no-such-adapter.*\(ERR_NOT_FOUND\)\n$/);
  t.is(text.stdout, '');
  t.is(json.code, 1, json.stderr);
  t.like(JSON.parse(json.stdout), { error: { code: 'ERR_NOT_FOUND' } });
  t.false(existsSync(out));
});

test('the flag parsers: integers, numbers, choices, with messages that say what was expected and received', (t) => {
  t.is(parseInteger('--k', '+12', { min: 1 }), 12);
  t.is(parseInteger('--k', ' 7 ', { min: 0, max: 7 }), 7);
  for (const bad of ['', '1.5', '-1', '0x10', '1e3', 'nine', '9007199254740993']) {
    t.throws(() => parseInteger('--k', bad, { min: 0 }), { instanceOf: UsageError, message: `--k expects an integer >= 0, not ${JSON.stringify(bad)}` });
  }
  t.throws(() => parseInteger('--p', '70000', { min: 0, max: 65535 }), { message: '--p expects an integer from 0 to 65535, not "70000"' });
  t.is(parseNumber('--w', '-0.25'), -0.25);
  t.is(parseNumber('--f', '1', { above: 0, max: 1 }), 1);
  t.throws(() => parseNumber('--w', 'Infinity'), { message: '--w expects a finite number, not "Infinity"' });
  t.throws(() => parseNumber('--w', ' '), { message: '--w expects a finite number, not " "' });
  t.throws(() => parseNumber('--f', '0', { noun: 'a fraction', above: 0, max: 1 }), { message: '--f expects a fraction in (0, 1], not "0"' });
  t.throws(() => parseNumber('--ms', '-1', { noun: 'a number of milliseconds', min: 0 }), { message: '--ms expects a number of milliseconds >= 0, not "-1"' });
  t.is(parseChoice('--dtype', 'bf16', ['F32', 'BF16'] as const, true), 'BF16');
  t.throws(() => parseChoice('--format', 'onnx', ['peft', 'kohya'] as const), { message: '--format must be one of peft, kohya, not "onnx"' });
});

// ---------------------------------------------------------------------------------------
// combine, end to end

const NAMES = ['unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q', 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v'];

async function writeAdapters(dir: string, seed: number, count: number): Promise<{ paths: string[]; adapters: LoraAdapter[] }> {
  const bases = NAMES.map((_, m) => plantedBases(24, 20, 5, 5, seed + 50 * m));
  const paths: string[] = [];
  const adapters: LoraAdapter[] = [];
  for (let i = 0; i < count; i++) {
    const adapter = memoryAdapter(NAMES.map((name, m) => ({ name, ...plantedFactors(bases[m]!, 4, seed + 7 * i + 50 * m + 1, 0.05), alpha: 8 })));
    const folder = path.join(dir, `task-${i}`);
    await saveAdapter(adapter, folder, { format: 'peft' });
    paths.push(folder);
    adapters.push(adapter);
  }
  return { paths, adapters };
}

/** Every factor of `a` equals `b`'s, bit for bit. */
function sameFactors(t: import('ava').ExecutionContext, a: LoraAdapter, b: LoraAdapter, what: string): void {
  t.deepEqual([...a.modules.keys()].sort(), [...b.modules.keys()].sort(), what);
  for (const [name, m] of a.modules) {
    const other = b.modules.get(name)!;
    t.is(m.rank, other.rank, `${what} ${name} rank`);
    t.is(m.scale, other.scale, `${what} ${name} scale`);
    t.deepEqual(Array.from(m.A.data), Array.from(other.A.data), `${what} ${name} A`);
    t.deepEqual(Array.from(m.B.data), Array.from(other.B.data), `${what} ${name} B`);
  }
}

test('combine: svd, ties and cat on adapter folders write what combineAdapters returns; text and --json reports', async (t) => {
  const dir = await tempDir(t);
  const seed = freshSeed();
  t.log(`seed ${seed}`);
  const { paths } = await writeAdapters(dir, seed, 3);
  const runs: Array<{ args: string[]; options: Parameters<typeof combineAdapters>[1] }> = [
    { args: ['--method', 'svd', '--weights', '1,0.5,-0.25', '--rank', '3'], options: { method: 'svd', weights: [1, 0.5, -0.25], rank: 3 } },
    { args: ['--method', 'ties', '--density', '0.4', '--seed', '9'], options: { method: 'ties', weights: [1, 1, 1], density: 0.4, seed: 9 } },
    { args: ['--method', 'dare_linear_svd', '--density', '0.5', '--seed', '3', '--rank', '4'], options: { method: 'dare_linear_svd', weights: [1, 1, 1], density: 0.5, seed: 3, rank: 4 } },
    { args: ['--method', 'cat', '--weights', '2,1,1'], options: { method: 'cat', weights: [2, 1, 1] } },
  ];
  for (const [i, { args, options }] of runs.entries()) {
    const out = path.join(dir, `combined-${i}`);
    const r = await eigenlorax(['combine', ...paths, ...args, '-o', out, '--json']);
    t.is(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout) as { method: string; weights: number[]; format: string; modules: number; ranks: number[]; files: string[] };
    const expected = await combineAdapters(paths, options);
    const written = await loadAdapter(out);
    sameFactors(t, written, expected, options.method);
    t.is(report.method, options.method);
    t.deepEqual(report.weights, [...options.weights]);
    t.is(report.format, 'peft');
    t.is(report.modules, NAMES.length);
    t.deepEqual(report.ranks, [...expected.modules.values()].map((m) => m.rank));
    t.true(report.files.every((f) => existsSync(f)));
  }
  const text = await eigenlorax(['combine', ...paths, '--method', 'cat', '-o', path.join(dir, 'text'), '--format', 'kohya', '--dtype', 'f16']);
  t.is(text.code, 0, text.stderr);
  t.regex(text.stdout, /^combined 3 adapters \(cat\) as kohya\n/);
  t.regex(text.stdout, /^ {2}ranks +12 \(2\)$/m);
  t.true(existsSync(path.join(dir, 'text', 'combined.safetensors')));
  const kohya = await loadAdapter(path.join(dir, 'text', 'combined.safetensors'));
  t.is(kohya.format, 'kohya');
  t.is([...kohya.modules.values()][0]!.dtypes.A, 'F16');
});

test('combine --subspace: linear on coefficients files is the exact weighted sum that combineAdapters gives', async (t) => {
  const dir = await tempDir(t);
  const seed = freshSeed();
  t.log(`seed ${seed}`);
  const { adapters } = await writeAdapters(dir, seed, 4);
  const built = await buildSubspace(adapters, { components: 5, seed: 1 });
  const folder = path.join(dir, 'subspace');
  await saveSubspace(built, folder);
  const files: string[] = [];
  for (const [i, c] of built.coefficients.entries()) {
    files.push(path.join(dir, `c${i}.safetensors`));
    await saveCoefficients(c, files[i]!);
  }
  const out = path.join(dir, 'exact');
  const r = await eigenlorax(['combine', '--subspace', folder, ...files, '--method', 'linear', '--weights', '0.5,0.25,0.125,0.125', '-o', out]);
  t.is(r.code, 0, r.stderr);
  const subspace = await loadSubspace(folder);
  const coefficients = await Promise.all(files.map((f) => loadCoefficients(f, subspace)));
  const expected = await combineAdapters(coefficients, { method: 'linear', weights: [0.5, 0.25, 0.125, 0.125], subspace });
  sameFactors(t, await loadAdapter(out), expected, 'linear on a subspace');
  const mismatch = await eigenlorax(['combine', files[0]!, files[1]!, '--method', 'linear', '-o', path.join(dir, 'no')]);
  t.is(mismatch.code, 1, 'coefficients files without --subspace are not adapters');
  t.regex(mismatch.stderr, /\(ERR_[A-Z_]+\)\n$/);
});

test('completion bash|zsh: the script completes commands, nested commands, flags, and file names after a flag that takes a value (run in bash)', async (t) => {
  const bash = spawnSync('bash', ['--version']);
  if (bash.status !== 0) {
    t.log('skipped: bash is not installed');
    t.pass();
    return;
  }
  const dir = await tempDir(t);
  const bashScript = await eigenlorax(['completion', 'bash']);
  t.is(bashScript.code, 0, bashScript.stderr);
  const zsh = await eigenlorax(['completion', 'zsh']);
  t.is(zsh.code, 0, zsh.stderr);
  t.regex(zsh.stdout, /bashcompinit/);
  t.is((await eigenlorax(['completion', 'fish'])).code, 2);
  const script = path.join(dir, 'eigenlorax.bash');
  await writeFile(script, bashScript.stdout);
  await writeFile(path.join(dir, 'adapters.txt'), '');
  // COMPREPLY for the words typed so far (the last one is being completed).
  const complete = (...words: string[]) => {
    const quoted = words.map((w) => `'${w}'`).join(' ');
    const r = spawnSync('bash', ['-c', `source '${script}'; cd '${dir}'; COMP_WORDS=(eigenlorax ${quoted}); COMP_CWORD=${words.length}; _eigenlorax; printf '%s\\n' "\${COMPREPLY[@]}"`], { encoding: 'utf8' });
    t.is(r.status, 0, r.stderr);
    return r.stdout.split('\n').filter((l) => l !== '');
  };
  t.deepEqual(complete('bu'), ['build']);
  t.deepEqual(complete('co').sort(), ['combine', 'completion', 'convert']);
  t.deepEqual(complete('queue', 'b'), ['build']);
  t.deepEqual(complete('queue', 'build', '--re').sort(), ['--redis', '--resume']);
  t.deepEqual(complete('build', '--comp'), ['--components']);
  t.deepEqual(complete('build', '--components', 'ad'), ['adapters.txt'], 'a value: files, not flags');
  t.deepEqual(complete('merge', '-o', 'ad'), ['adapters.txt']);
  t.deepEqual(complete('build', 'ad'), ['adapters.txt']);
  t.deepEqual(complete('serve', '--tok'), ['--token']);
  // Every command's visible flags are offered, so the script follows the program.
  for (const command of createProgram().commands.filter((c) => c.name() !== 'help' && c.commands.length === 0)) {
    const offered = complete(command.name(), '--');
    for (const option of command.options) if (!option.hidden && option.long) t.true(offered.includes(option.long), `${command.name()} ${option.long}`);
  }
});
