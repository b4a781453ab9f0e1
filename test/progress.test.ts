/** The one progress bar (lib/progress.ts): its line, terminals only, log lines above it, cleared or kept at the end. */
import test from 'ava';
import { Linear, Sequential, trainModel } from '../lib/train/index.js';
import { ProgressBar, formatBarLine } from '../lib/progress.js';
import { blobs } from './helpers/train-fixtures.js';

/** A fake terminal (or not) that records what is written. */
function stream(isTTY: boolean, columns = 120) {
  const writes: string[] = [];
  return { isTTY, columns, writes, write: (s: string) => writes.push(s), text: () => writes.join('') };
}

test('formatBarLine: label, bar, percent, counts, details, and an item shortened from the left to fit', (t) => {
  t.is(formatBarLine({ label: 'build', value: 1, total: 4, detail: ['x 1'] }, 8), 'build  ██░░░░░░  25%  1/4  x 1');
  t.is(formatBarLine({ label: 'done', value: 0, total: 0 }, 4), 'done  ████ 100%  0/0');
  t.is(formatBarLine({ label: 'over', value: 5, total: 4 }, 4), 'over  ████ 100%  5/4');
  const item = 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q';
  t.is(formatBarLine({ label: 'p', value: 1, total: 2, item }, 4), `p  ██░░  50%  1/2  ${item}`);
  const short = formatBarLine({ label: 'p', value: 1, total: 2, item }, 4, 40);
  t.is(short, `p  ██░░  50%  1/2  ...${item.slice(-17)}`);
  t.true(short.length < 40);
  t.is(formatBarLine({ label: 'p', value: 1, total: 2, item }, 4, 22), 'p  ██░░  50%  1/2', 'no room: no item');
});

test('on a terminal: drawn, log lines go above the bar, the line is cleared at the end (or kept)', (t) => {
  const tty = stream(true);
  const bar = new ProgressBar(tty);
  t.true(bar.enabled);
  bar.update({ label: 'build', value: 1, total: 3, item: 'module.a' });
  bar.log('a note');
  bar.update({ label: 'build', value: 3, total: 3, item: 'module.c' });
  bar.stop();
  const text = tty.text();
  t.true(text.includes('build  ███████░░░░░░░░░░░░░  33%  1/3  module.a'), JSON.stringify(text));
  t.true(text.includes('\r\x1b[2Ka note\n'), 'the log line clears the bar first');
  t.true(text.includes('100%  3/3  module.c'), 'the last state is drawn when stopped');
  t.true(text.endsWith('\x1b[2K'), `cleared at the end: ${JSON.stringify(text.slice(-20))}`);

  const kept = stream(true);
  const training = new ProgressBar(kept, { keep: true });
  training.update({ label: 'epoch 1/1', value: 2, total: 2 });
  training.stop();
  t.true(kept.text().endsWith('\n'), 'a kept bar ends its line');
  training.stop();
});

test('not a terminal: nothing unless the stream was handed over; forTerminal honours quiet', (t) => {
  const none = new ProgressBar(null);
  none.update({ label: 'x', value: 1, total: 2 });
  none.log('nothing');
  none.stop();
  t.false(none.enabled);
  t.false(ProgressBar.forTerminal(true).enabled);
  t.is(ProgressBar.forTerminal(false).enabled, process.stderr.isTTY === true);

  const file = stream(false);
  const bar = new ProgressBar(file);
  bar.update({ label: 'x', value: 1, total: 2 });
  bar.log('noted');
  bar.stop();
  const text = file.text();
  t.false(text.includes('\x1b['), 'no control characters off a terminal');
  t.true(text.includes('x  ██████████░░░░░░░░░░  50%  1/2\n'), JSON.stringify(text));
  t.true(text.includes('noted\n'));
});

test("trainModel draws on a caller's bar, clears it after each run, and prints its evaluations above it", async (t) => {
  const tty = stream(true, 200);
  const bar = new ProgressBar(tty);
  for (const seed of [1, 2]) {
    const model = new Sequential([Linear.create('fc', 10, 3, { seed })]);
    await trainModel(model, { train: blobs(60, 10, 3, seed) }, { epochs: 2, batchSize: 20, progress: bar });
  }
  const text = tty.text();
  t.is((text.match(/training \(epoch 2\)/g) ?? []).length, 2, 'one evaluation line per epoch and run');
  t.regex(text, /epoch 2\/2  █+ 100%  3\/3  loss \d/);
  t.true(text.endsWith('\x1b[2K'), 'cleared, not kept, at the end of each run');
  await t.throwsAsync(trainModel(new Sequential([Linear.create('fc', 10, 3)]), { train: blobs(20, 10, 3, 1) }, { progress: 'yes' as never }), {
    code: 'ERR_INVALID_ARGUMENT',
    message: /a ProgressBar/,
  });
});
