/** `eigenlorax info` (the native build's facts) and `eigenlorax devices` (CPU and CUDA). */
import { Command } from 'commander';
import { examples, printJson } from './format.js';

/** One fact as text: lists joined, objects as JSON, the rest as is. */
function factText(value: unknown): string {
  if (Array.isArray(value)) return value.map((v) => factText(v)).join(', ');
  if (value !== null && typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

export function infoCommand(): Command {
  return new Command('info')
    .usage('[--json]')
    .summary('native build: Eigen version, SIMD, OpenMP, threads, the addon loaded')
    .description('Prints every fact of buildInfo() (the native build) and the kernel thread count, one per line or as JSON.')
    .option('--json', 'print the facts as one JSON object')
    .addHelpText('after', examples([['eigenlorax info', 'eigen 3.4.0, simd avx2 fma, openmp true, threads 16, ...'], ['eigenlorax info --json', 'the same as JSON']]))
    .action(async (options: { json?: boolean }) => {
      const { buildInfo, getThreads } = await import('../runtime.js');
      // Every field buildInfo() has, whatever it grows, then the threads of this process.
      const info: Record<string, unknown> = { ...buildInfo(), threads: getThreads() };
      if (options.json === true) printJson(info);
      else for (const [key, value] of Object.entries(info)) process.stdout.write(`${key.padEnd(16)} ${factText(value)}\n`);
    });
}

export function devicesCommand(): Command {
  return new Command('devices')
    .usage('[--json]')
    .summary('where operations can run: the CPU, and each CUDA GPU or why the GPU backend cannot run here')
    .description('Lists the CPU backend and each CUDA device (name, compute capability, SMs, memory, runtime versions), or why CUDA is unavailable.')
    .option('--json', 'print { cpu, cuda } as JSON')
    .addHelpText('after', examples([['eigenlorax devices', 'cpu available ...; cuda:0 available NVIDIA ..., or cuda unavailable: <reason>']]))
    .action(async (options: { json?: boolean }) => {
      const { buildInfo, getThreads } = await import('../runtime.js');
      const { cudaStatus } = await import('../cuda.js');
      const cpu = buildInfo();
      const cuda = await cudaStatus();
      if (options.json === true) {
        printJson({ cpu: { ...cpu, threads: getThreads() }, cuda });
        return;
      }
      const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(1)} GiB`;
      const versionText = (v: number) => (v > 0 ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : 'none');
      const lines = [`cpu     available  ${cpu.simd}, ${getThreads()} threads${cpu.openmp ? ' (OpenMP)' : ''}`];
      if (cuda.available) {
        for (const d of cuda.devices) {
          const memory = d.index === 0 ? `${gib(d.freeBytes)} free of ${gib(d.totalBytes)}` : gib(d.totalBytes);
          lines.push(`cuda:${d.index}  ${d.index === 0 ? 'available' : 'present  '}  ${d.name}, compute ${d.computeCapability}, ${d.multiprocessors} SMs, ${memory}`);
        }
        lines.push(`        CUDA runtime ${versionText(cuda.runtimeVersion)}, driver ${versionText(cuda.driverVersion)}, cuBLAS ${cuda.cublasVersion} (${cuda.cublasLibrary})`);
        if (cuda.devices.length > 1) lines.push('        (operations run on device 0)');
      } else {
        lines.push(`cuda    unavailable: ${cuda.reason}`);
        for (const d of cuda.devices) lines.push(`cuda:${d.index}  ${d.name}, compute ${d.computeCapability}, ${gib(d.totalBytes)}`);
      }
      process.stdout.write(`${lines.join('\n')}\n`);
    });
}
