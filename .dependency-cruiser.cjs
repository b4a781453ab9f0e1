/**
 * `npm run lint` (dependency-cruiser): the import rules of lib/ drawn in the README's
 * "Layout". It fails on an import cycle and on a layer importing a layer above it.
 */
const layer = (name, from, mayNotImport) => ({
  name,
  severity: 'error',
  // The entry points (the package root and the command) sit on top of everything.
  from: { path: from, pathNot: '^lib/(index|cli)\\.ts$' },
  to: { path: mayNotImport },
});
const above = (folders) => `^lib/(${folders.join('|')})(/|\\.ts$)`;

module.exports = {
  forbidden: [
    { name: 'no-cycles', severity: 'error', from: {}, to: { circular: true } },
    // The raw addon (lib/native.ts) only behind its typed wrappers (lib/native/ops.ts).
    { name: 'native-through-ops', severity: 'error', from: { path: '^lib/', pathNot: '^lib/native(\\.ts$|/)' }, to: { path: '^lib/native\\.ts$' } },
    // lib/*.ts: matrices, errors, validation, the native boundary and its typed wrappers.
    layer('core-is-the-bottom', '^lib/[^/]+\\.ts$', above(['queue', 'io', 'chart', 'adapters', 'extract', 'subspace', 'merge', 'combine', 'data', 'train', 'serve', 'demo', 'cli'])),
    // SVG charts: drawing only (escaping, ticks, axes), for subspace/ (the analysis chart) and demo/ (the curves).
    layer('chart-knows-no-features', '^lib/chart/', above(['queue', 'io', 'adapters', 'extract', 'subspace', 'merge', 'combine', 'data', 'train', 'serve', 'demo', 'cli'])),
    layer('io-knows-no-features', '^lib/io/', above(['queue', 'adapters', 'extract', 'subspace', 'merge', 'combine', 'data', 'train', 'serve', 'demo', 'cli'])),
    layer('adapters-below-subspaces', '^lib/adapters/', above(['queue', 'extract', 'subspace', 'merge', 'combine', 'data', 'train', 'serve', 'demo', 'cli'])),
    layer('extract-below-subspaces', '^lib/extract/', above(['queue', 'subspace', 'merge', 'combine', 'data', 'train', 'serve', 'demo', 'cli'])),
    layer('subspace-below-its-users', '^lib/subspace/', above(['queue', 'merge', 'combine', 'data', 'train', 'serve', 'demo', 'cli'])),
    // lib/queue/: the work queue (BullMQ) around subspace builds; only the CLI uses it.
    layer('queue-below-the-cli', '^lib/queue/', above(['merge', 'combine', 'data', 'train', 'serve', 'demo', 'cli'])),
    layer('merge-combine-below-apps', '^lib/(merge|combine)/', above(['data', 'train', 'serve', 'demo', 'cli'])),
    layer('data-below-training', '^lib/data/', above(['train', 'serve', 'demo', 'cli'])),
    layer('train-below-serving', '^lib/train/', above(['serve', 'demo', 'cli'])),
    layer('serve-below-the-demo', '^lib/serve/', above(['demo', 'cli'])),
    layer('demo-below-the-cli', '^lib/demo/', above(['cli'])),
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: false, // runtime imports; a type-only import is no cycle at run time
    tsConfig: { fileName: 'tsconfig.json' },
    exclude: { path: '^(dist|node_modules|test|bench)/' },
  },
};
