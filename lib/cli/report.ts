/**
 * The one error reporter and exit-code policy of `eigenlorax`:
 *   0  done (also --help and --version);
 *   1  a failure: an EigenLoraxError or system error, printed as
 *      `eigenlorax: <message> (<code>)`; with --json, commands that opted in (`jsonErrors`)
 *      also print `{ "error": { code, message } }` on stdout;
 *   2  a usage mistake (an unknown command or flag, a missing or malformed argument):
 *      `eigenlorax: <message>`, then the command's usage line;
 * 130  the demo interrupted by Ctrl-C (ERR_ABORTED), as shells report SIGINT.
 */
import { CommanderError, type Command } from 'commander';
import { UsageError } from './options.js';

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_INTERRUPTED = 130;

/** Thrown by a command that has already printed its failures (inspect, project: one per item): exit code 1. */
export class ReportedFailure extends Error {
  override name = 'ReportedFailure';
}

const jsonErrorCommands = new WeakSet<Command>();

/** Marks a command whose failures are also printed as JSON on stdout under --json. */
export function jsonErrors(command: Command): Command {
  jsonErrorCommands.add(command);
  return command;
}

/** `{ code, message }` of an error that carries a string code (EigenLoraxError, system errors). */
export function codedError(error: unknown): { code: string; message: string } | null {
  const e = error as { code?: unknown; message?: unknown } | null;
  if (e === null || typeof e !== 'object' || typeof e.code !== 'string') return null;
  return { code: e.code, message: typeof e.message === 'string' ? e.message : String(error) };
}

/** The line printed for one failed item (inspect and project report per item and go on). */
export function failureLine(error: { code: string; message: string }): string {
  return `eigenlorax: ${error.message} (${error.code})\n`;
}

/** The usage text shown after a usage mistake: the root help, or a command's usage line. */
function usageOf(command: Command): string {
  if (command.parent === null) return command.helpInformation();
  const path: string[] = [];
  for (let c: Command | null = command; c !== null; c = c.parent) path.unshift(c.name());
  return `Usage: ${path.join(' ')} ${command.usage()}\n\nRun '${path.join(' ')} --help' for its flags and examples.\n`;
}

function commanderMessage(error: CommanderError, command: Command): string {
  // "unknown command 'info extra'", as for a word that names no command.
  if (error.code === 'commander.excessArguments') return `unknown command '${[command.name(), ...command.args].join(' ')}'`;
  return error.message.replace(/^error: /, '');
}

/** Prints `error` for `command` (the one that was running, or the root) and returns the exit code. */
export function reportError(error: unknown, command: Command): number {
  if (error instanceof CommanderError && error.exitCode === 0) return EXIT_OK; // --help, --version: already printed
  if (error instanceof CommanderError || error instanceof UsageError) {
    const message = error instanceof CommanderError ? commanderMessage(error, command) : error.message;
    process.stderr.write(`eigenlorax: ${message}\n\n${usageOf(command)}`);
    return EXIT_USAGE;
  }
  if (error instanceof ReportedFailure) return EXIT_FAILURE;
  const coded = codedError(error);
  if (coded === null) {
    process.stderr.write(`eigenlorax: ${(error as { message?: string } | null)?.message ?? String(error)}\n`);
    return EXIT_FAILURE;
  }
  process.stderr.write(failureLine(coded));
  if (jsonErrorCommands.has(command) && command.opts().json === true) process.stdout.write(`${JSON.stringify({ error: coded }, null, 2)}\n`);
  return coded.code === 'ERR_ABORTED' ? EXIT_INTERRUPTED : EXIT_FAILURE;
}
