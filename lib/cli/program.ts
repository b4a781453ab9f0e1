/**
 * The `eigenlorax` program on commander: the commands (one file each in lib/cli/), the
 * root help, --version, and the one error reporter (report.ts) that turns what a command
 * throws into an exit code.
 *
 * Adding a command: write lib/cli/<name>.ts exporting a function that returns a
 * commander `Command` (usage line, summary, description, options whose values are parsed
 * by options.ts, examples with `addHelpText`, an action that imports the library lazily
 * and throws what fails), and list it in `COMMANDS` below. Command files import library
 * code only inside their actions, so `--version` and `--help` work without the addon.
 */
import { Command, CommanderError, Option } from 'commander';
import { version } from '../version.js';
import { analyzeCommand } from './analyze.js';
import { buildCommand } from './build.js';
import { combineCommand } from './combine.js';
import { completionCommand } from './completion.js';
import { demoCommand } from './demo.js';
import { devicesCommand, infoCommand } from './info.js';
import { convertCommand } from './convert.js';
import { exportCommand } from './export.js';
import { extractCommand } from './extract.js';
import { gatherCommand } from './gather.js';
import { inspectCommand } from './inspect.js';
import { mergeCommand } from './merge.js';
import { projectCommand } from './project.js';
import { queueCommand } from './queue.js';
import { UsageError } from './options.js';
import { reportError } from './report.js';
import { serveCommand } from './serve.js';
import { workerCommand } from './worker.js';

const COMMANDS: ReadonlyArray<() => Command> = [
  infoCommand,
  devicesCommand,
  inspectCommand,
  mergeCommand,
  buildCommand,
  gatherCommand,
  queueCommand,
  workerCommand,
  projectCommand,
  exportCommand,
  analyzeCommand,
  combineCommand,
  extractCommand,
  convertCommand,
  demoCommand,
  serveCommand,
  completionCommand,
];

const SUMMARY_INDENT = ' '.repeat(6);

/** The root help: every command's usage line and summary, then the exit codes. */
function rootHelp(program: Command): string {
  const lines = [
    `eigenlorax ${version}: recycle LoRA adapters into a shared principal subspace`,
    '',
    'Usage:',
    '  eigenlorax --version            print the version',
    '  eigenlorax --help               print this help',
    '  eigenlorax <command> --help     a command\'s flags and examples (also: eigenlorax help <command>)',
    '',
  ];
  for (const command of program.commands) {
    if (command.name() === 'help') continue;
    lines.push(`  eigenlorax ${command.name()} ${command.usage()}`);
    lines.push(`${SUMMARY_INDENT}${command.summary()}`);
  }
  lines.push(
    '',
    'Exit codes: 0 done; 1 a failure (the message ends with its error code, e.g. ERR_NOT_FOUND);',
    '            2 a usage mistake (unknown command or flag, missing or malformed argument).',
    '',
    "Library: import { rsvd, eigenLoraForward, mergeIntoBase, ... } from 'eigenlorax'",
    '',
  );
  return lines.join('\n');
}

/** Settings every command and the root share: errors thrown to the reporter (which prints them). */
function configure(command: Command): Command {
  for (const sub of command.commands) configure(sub); // nested commands (queue build)
  return command.exitOverride().configureOutput({ outputError: () => undefined }).helpOption('-h, --help', 'print this help');
}

/** The program with every command. */
export function createProgram(): Command {
  const program = configure(new Command('eigenlorax')).version(version, '-v, --version', 'print the version');
  program.helpInformation = () => rootHelp(program);
  program.helpCommand('help [command]', 'print the help of a command');
  // A hidden -v on every command: --version wins wherever it is, as --help does.
  for (const make of COMMANDS) program.addCommand(configure(make()).addOption(new Option('-v, --version').hideHelp()));
  program.hook('preAction', (_root, action) => {
    if (action.opts().version === true) {
      process.stdout.write(`${version}\n`);
      throw new CommanderError(0, 'commander.version', version);
    }
  });
  return program;
}

/** Runs the command line `argv` (without node and the script); resolves with the exit code. */
export async function runCli(argv: readonly string[]): Promise<number> {
  const program = createProgram();
  if (argv.length === 0) {
    process.stdout.write(program.helpInformation());
    return 0;
  }
  // `help <word>` for a word that names no command: as an unknown command (commander would print the help to stderr).
  if (argv[0] === 'help' && argv[1] !== undefined && !program.commands.some((c) => c.name() === argv[1])) {
    return reportError(new UsageError(`unknown command '${argv[1]}'`), program);
  }
  let active: Command = program;
  const track = (_parent: Command, sub: Command) => {
    active = sub;
    sub.hook('preSubcommand', track); // a nested command (queue build) reports with its own usage
  };
  program.hook('preSubcommand', track);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (error) {
    return reportError(error, active);
  }
}
