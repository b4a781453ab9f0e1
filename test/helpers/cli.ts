/** Runs the `eigenlorax` command as a child process, the way a user runs it. */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** dist/lib/cli.js, the package's bin. */
export const cliPath = fileURLToPath(new URL('../../lib/cli.js', import.meta.url));

export interface CliResult {
  /** The exit code (null when a signal ended it). */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** What `whenOutput.run` threw, if anything (the child is then killed). */
  error?: unknown;
}

export interface CliOptions {
  env?: NodeJS.ProcessEnv;
  /** Killed (and the promise rejected) after this long; default 60 s. */
  timeout?: number;
  /** Once stdout matches `pattern`, `run` gets the match and the child (e.g. to make requests, then send SIGTERM). */
  whenOutput?: { pattern: RegExp; run: (match: RegExpExecArray, child: ChildProcess) => Promise<void> };
}

/** Runs `eigenlorax ...args`; resolves with the exit code and the output instead of rejecting on a non-zero code. */
export function eigenlorax(args: readonly string[], options: CliOptions = {}): Promise<CliResult> {
  const timeout = options.timeout ?? 60_000;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cliPath, ...args], { env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let error: unknown;
    let matched = false;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeout);
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      const when = options.whenOutput;
      const match = when === undefined || matched ? null : when.pattern.exec(stdout);
      if (when !== undefined && match !== null) {
        matched = true;
        when.run(match, child).catch((e: unknown) => {
          error = e;
          child.kill('SIGKILL');
        });
      }
    });
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) reject(new Error(`eigenlorax ${args.join(' ')} did not finish within ${timeout} ms; stderr: ${stderr.slice(-2000)}`));
      else resolve({ code, signal, stdout, stderr, ...(error === undefined ? {} : { error }) });
    });
  });
}
