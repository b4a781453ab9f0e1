/**
 * `eigenlorax inspect`, run as a child process on generated adapters, and the library's
 * inspectAdapter on a file far larger than what it is allowed to read.
 */
import test from 'ava';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { inspectAdapter } from '../lib/index.js';
import { eigenlorax as runCli } from './helpers/cli.js';
import { kohyaSdModules, tempDir, writeDiffusers, writeGpt2Like, writeKohya } from './helpers/adapter-fixtures.js';

const eigenlorax = (args: string[]) => runCli(args, { timeout: 30_000 });


test('inspect --json: format, base model, modules, ranks, alphas, scales, dtypes, parameters, bytes, extras', async (t) => {
  const dir = await tempDir(t);
  await writeGpt2Like(path.join(dir, 'peft'), 3, { lora_alpha: 8 });
  await writeKohya(path.join(dir, 'k.safetensors'), kohyaSdModules());
  const r = await eigenlorax(['inspect', '--json', path.join(dir, 'peft'), path.join(dir, 'k.safetensors')]);
  t.is(r.code, 0, r.stderr);
  t.is(r.stderr, '');
  const [peft, kohya] = JSON.parse(r.stdout) as Array<Record<string, unknown>>;
  t.like(peft, {
    path: path.join(dir, 'peft'),
    format: 'peft',
    baseModel: 'gpt2',
    modules: 3,
    layouts: [{ value: 'linear', count: 3 }],
    ranks: [{ value: 4, count: 3 }],
    alphas: [{ value: 8, count: 3 }],
    scales: [{ value: 2, count: 3 }],
    fanInFanOut: 3,
    rslora: 0,
    dtypes: [{ value: 'F32', count: 6 }],
    loraParameters: 3 * 4 * (16 + 48),
    loraBytes: 3 * 4 * (16 + 48) * 4,
    extras: [{ key: 'base_model.model.score.weight', dtype: 'F32', shape: [3, 16], bytes: 3 * 16 * 4 }],
    extraBytes: 3 * 16 * 4,
  });
  t.is((peft?.files as string[]).length, 2);
  t.true((peft?.fileBytes as number) > (peft?.loraBytes as number));
  t.like(kohya, {
    format: 'kohya',
    baseModel: 'v1-5-pruned.safetensors',
    modules: 8,
    layouts: [
      { value: 'conv', count: 2 },
      { value: 'linear', count: 6 },
    ],
    ranks: [
      { value: 2, count: 1 },
      { value: 4, count: 6 },
      { value: 8, count: 1 },
    ],
    scales: [
      { value: 0.25, count: 1 },
      { value: 0.5, count: 2 },
      { value: 1, count: 3 },
      { value: 1.5, count: 1 },
      { value: 2, count: 1 },
    ],
  });
});

test('inspect prints a readable summary', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'pytorch_lora_weights.safetensors');
  await writeDiffusers(file, 'processor', { blocks: 1 });
  const r = await eigenlorax(['inspect', dir]);
  t.is(r.code, 0, r.stderr);
  t.true(r.stdout.startsWith(`${dir}\n`));
  t.regex(r.stdout, /^ {2}format +diffusers$/m);
  t.regex(r.stdout, /^ {2}modules +8 \(linear 8\)$/m);
  t.regex(r.stdout, /^ {2}ranks +4 \(8\)$/m);
  t.regex(r.stdout, /^ {2}scales +1 \(8\)$/m);
  t.regex(r.stdout, /^ {2}dtypes +F32 \(16\)$/m);
  t.regex(r.stdout, /^ {2}extras +-$/m);
});

test('inspect: a bad path exits with code 1 and the typed error; the good paths are still reported', async (t) => {
  const dir = await tempDir(t);
  await writeGpt2Like(path.join(dir, 'good'));
  const missing = path.join(dir, 'missing');
  const r = await eigenlorax(['inspect', '--json', path.join(dir, 'good'), missing]);
  t.is(r.code, 1);
  t.regex(r.stderr, /ERR_NOT_FOUND/);
  t.true(r.stderr.includes(missing));
  const reports = JSON.parse(r.stdout) as Array<Record<string, unknown>>;
  t.is(reports[0]?.format, 'peft');
  t.like(reports[1], { path: missing, error: { code: 'ERR_NOT_FOUND' } });
  const text = await eigenlorax(['inspect', missing]);
  t.is(text.code, 1);
  t.is(text.stdout, '');
  t.regex(text.stderr, /^eigenlorax: .*missing.*\(ERR_NOT_FOUND\)\n$/);
});

test('inspect without a path, or with an unknown --format, exits with code 2', async (t) => {
  const none = await eigenlorax(['inspect']);
  t.is(none.code, 2);
  t.regex(none.stderr, /inspect needs at least one adapter path/);
  const format = await eigenlorax(['inspect', '--format', 'loha', '.']);
  t.is(format.code, 2);
  t.regex(format.stderr, /--format/);
});

test('inspectAdapter reads only the header of a 1.5 GB adapter', async (t) => {
  const dir = await tempDir(t);
  // A kohya file whose header declares a 1.5 GB down-projection; the data section is a
  // hole (a sparse file), so reading it would show up in time and memory.
  const file = path.join(dir, 'huge.safetensors');
  const rank = 64;
  const width = 6_000_000;
  const downBytes = rank * width * 4;
  const header = JSON.stringify({
    __metadata__: { ss_network_module: 'networks.lora' },
    'lora_unet_conv_in.lora_down.weight': { dtype: 'F32', shape: [rank, width], data_offsets: [0, downBytes] },
    'lora_unet_conv_in.lora_up.weight': { dtype: 'F32', shape: [16, rank], data_offsets: [downBytes, downBytes + 16 * rank * 4] },
  });
  const padded = header + ' '.repeat((8 - (header.length % 8)) % 8);
  const handle = await open(file, 'w');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(padded.length));
  await handle.write(length, 0, 8, 0);
  await handle.write(Buffer.from(padded), 0, padded.length, 8);
  await handle.truncate(8 + padded.length + downBytes + 16 * rank * 4);
  await handle.close();
  const before = process.memoryUsage().arrayBuffers;
  const started = performance.now();
  const report = await inspectAdapter(file);
  const elapsed = performance.now() - started;
  t.like(report, { format: 'kohya', modules: 1, loraBytes: downBytes + 16 * rank * 4, ranks: [{ value: 64, count: 1 }] });
  t.true(elapsed < 2000, `${elapsed.toFixed(0)} ms`);
  t.true(process.memoryUsage().arrayBuffers - before < 64 << 20, 'array buffers grew by less than 64 MB');
});
