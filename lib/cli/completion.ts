/**
 * `eigenlorax completion <bash|zsh>`: a completion script made from the program's own
 * command tree (commander offers none), so it names exactly the commands and flags this
 * version has. It completes command names, a command's flags after `-`, and file names
 * for arguments and flag values.
 */
import { Command } from 'commander';
import { examples } from './format.js';
import { choice } from './options.js';

const SHELLS = ['bash', 'zsh'] as const;

interface CommandFlags {
  /** `build`, or `queue build` for a nested command. */
  key: string;
  flags: string[];
  /** The flags that take a value (a file name is completed after them). */
  valued: string[];
}

function flagsOf(command: Command, key: string): CommandFlags {
  const flags: string[] = [];
  const valued: string[] = [];
  for (const option of command.options) {
    if (option.hidden) continue;
    const names = [option.long, option.short].filter((n): n is string => n !== undefined);
    flags.push(...names);
    if (option.required || option.optional) valued.push(...names);
  }
  flags.push('--help');
  return { key, flags, valued };
}

/** Every command (nested ones as `parent child`) with its flags, in the program's order. */
function commandTable(root: Command): { top: string[]; nested: Map<string, string[]>; table: CommandFlags[] } {
  const top: string[] = [];
  const nested = new Map<string, string[]>();
  const table: CommandFlags[] = [];
  for (const command of root.commands) {
    top.push(command.name());
    if (command.commands.length > 0) {
      nested.set(command.name(), command.commands.map((c) => c.name()));
      for (const sub of command.commands) table.push(flagsOf(sub, `${command.name()} ${sub.name()}`));
    }
    table.push(flagsOf(command, command.name()));
  }
  return { top, nested, table };
}

/** The bash function (zsh runs it through bashcompinit). */
export function completionScript(root: Command, shell: (typeof SHELLS)[number]): string {
  const { top, nested, table } = commandTable(root);
  const cases = table.map((c) => `    '${c.key}') flags='${c.flags.join(' ')}'; valued='${c.valued.join(' ')}' ;;`);
  const nestedCases = [...nested].map(([name, subs]) => `    ${name}) if (( COMP_CWORD == 2 )); then COMPREPLY=($(compgen -W '${subs.join(' ')}' -- "$cur")); return; fi; key="${name} \${COMP_WORDS[2]}" ;;`);
  return [
    `# eigenlorax ${shell} completion, made by \`eigenlorax completion ${shell}\``,
    ...(shell === 'zsh' ? ['autoload -U +X bashcompinit && bashcompinit'] : []),
    '_eigenlorax() {',
    '  local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
    `  if (( COMP_CWORD == 1 )); then COMPREPLY=($(compgen -W '${top.join(' ')} --help --version' -- "$cur")); return; fi`,
    '  local key="${COMP_WORDS[1]}" flags="" valued=""',
    '  case "$key" in',
    ...nestedCases,
    '  esac',
    '  case "$key" in',
    ...cases,
    '  esac',
    '  if [[ " $valued " == *" $prev "* || "$cur" != -* ]]; then COMPREPLY=($(compgen -f -- "$cur")); return; fi',
    '  COMPREPLY=($(compgen -W "$flags" -- "$cur"))',
    '}',
    'complete -o filenames -F _eigenlorax eigenlorax',
    '',
  ].join('\n');
}

export function completionCommand(): Command {
  return new Command('completion')
    .usage('<bash|zsh>')
    .summary('print a shell completion script for eigenlorax (commands, flags, file names)')
    .description(
      'Prints a completion script for bash or zsh made from this version\'s commands and flags. Load it in the shell\'s start-up file, ' +
        'or save it where the shell looks for completions.',
    )
    .argument('<shell>', 'bash or zsh', choice('<shell>', SHELLS))
    .addHelpText(
      'after',
      examples([
        ['eigenlorax completion bash > ~/.local/share/bash-completion/completions/eigenlorax', 'bash: loaded on demand by bash-completion'],
        ['echo \'source <(eigenlorax completion zsh)\' >> ~/.zshrc', 'zsh: loaded at start-up'],
      ]),
    )
    .action((shell: (typeof SHELLS)[number], _flags: unknown, command: Command) => {
      process.stdout.write(completionScript(command.parent ?? command, shell));
    });
}
