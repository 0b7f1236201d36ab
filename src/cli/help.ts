/**
 * `ublk help`, `ublk help -t TYPE [--filter FILTER...]` and `ublk COMMAND --help`, all printed
 * from the command table (commands.ts) and from the target's and filters' own option specs, in
 * ublksrv's layout: a synopsis line per command, then its options indented by a tab.
 */
import type { TargetOptionSpecs } from '../ublk/target/contract.js';
import { loadFilter, loadTarget } from '../ublk/target/loader.js';
import { filterSource, targetSource } from '../targets/registry.js';
import { findFilters, findTargetType, strictParse } from './args.js';
import {
  COMMANDS,
  GLOBAL_OPTIONS,
  commandOptions,
  type CommandName,
  type OptionDoc,
} from './commands.js';

/** Where an option's help text starts, after the tab. */
const FLAGS_WIDTH = 28;
/** Help text wraps to stay within this many columns (a tab counting 8). */
const LINE_WIDTH = 100;
/** A synopsis lists optional options one by one up to this many, else says [OPTION...]. */
const SYNOPSIS_OPTIONS = 4;

function flagText(name: string, option: OptionDoc): string {
  const value = option.type === 'string' ? ` ${option.value ?? 'VALUE'}` : '';
  return `${option.short ? `-${option.short}, ` : '    '}--${name}${value}`;
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  return [...lines, line];
}

/** One tab-indented line per option (more where the help text wraps). */
export function optionLines(options: Readonly<Record<string, OptionDoc>>): string[] {
  const lines: string[] = [];
  for (const [name, option] of Object.entries(options)) {
    const flags = flagText(name, option);
    const text = wrap(option.help, LINE_WIDTH - 8 - FLAGS_WIDTH - 1);
    if (flags.length > FLAGS_WIDTH) lines.push(`\t${flags}`);
    else lines.push(`\t${flags.padEnd(FLAGS_WIDTH)} ${text.shift()}`);
    for (const more of text) lines.push(`\t${' '.repeat(FLAGS_WIDTH)} ${more}`);
  }
  return lines;
}

function synopsisOption(name: string, option: OptionDoc): string {
  const flag = option.short ? `-${option.short}` : `--${name}`;
  const value = option.type === 'string' ? ` ${option.value ?? 'VALUE'}` : '';
  return `${flag}${value}${option.multiple ? '...' : ''}`;
}

function synopsis(name: CommandName): string {
  const command = COMMANDS[name];
  const options = Object.entries(command.options as Readonly<Record<string, OptionDoc>>);
  const required = options.filter(([, o]) => o.required).map(([n, o]) => synopsisOption(n, o));
  const optional = options.filter(([, o]) => !o.required);
  const words = [`ublk ${name}`, ...required];
  if ('operands' in command) words.push(command.operands);
  if (optional.length > SYNOPSIS_OPTIONS) words.push('[OPTION...]');
  else words.push(...optional.map(([n, o]) => `[${synopsisOption(n, o)}]`));
  return words.join(' ');
}

/** One command's usage: synopsis, what it does, its options, its notes. */
export function commandUsage(name: CommandName): string {
  const command = COMMANDS[name];
  const lines = [
    synopsis(name),
    `\t${command.summary}`,
    ...optionLines(command.options),
    ...('notes' in command ? command.notes.map((note) => `\t${note}`) : []),
  ];
  return lines.join('\n') + '\n';
}

/** `ublk help`: every command's usage, then the options that stand in place of a command. */
export function usage(): string {
  const commands = (Object.keys(COMMANDS) as CommandName[]).map(commandUsage).join('');
  const { version, help } = GLOBAL_OPTIONS;
  return (
    commands +
    `ublk -v | --version\n\t${version.help}\n` +
    `ublk -h | --help\n\t${help.help}\n` +
    `ublk COMMAND -h | --help\n\tthe usage of that command alone\n`
  );
}

function specLines(options: TargetOptionSpecs): string[] {
  const docs: Record<string, OptionDoc> = {};
  for (const [name, spec] of Object.entries(options)) {
    docs[name] = { type: spec.type, short: spec.short, help: spec.description };
  }
  return optionLines(docs);
}

/** `ublk add`'s options for a target and filters: the target's own, then each filter's. */
export async function targetUsage(
  type: string | undefined,
  filters: readonly string[],
): Promise<string> {
  const lines: string[] = [];
  if (type !== undefined) {
    const target = await loadTarget(targetSource(type));
    lines.push(`ublk add -t ${type} (target ${target.name})`, ...specLines(target.options ?? {}));
  }
  for (const name of filters) {
    const filter = await loadFilter(filterSource(name));
    lines.push(
      `ublk add --filter ${name} (filter ${filter.name})`,
      ...specLines(filter.options ?? {}),
    );
  }
  return lines.length === 0 ? '' : lines.join('\n') + '\n';
}

/** `ublk help [-t TYPE] [--filter FILTER...]`. */
export async function helpCommand(argv: readonly string[]): Promise<string> {
  const values = strictParse('help', argv, commandOptions('help'));
  const type = values.type as string | undefined;
  const filters = (values.filter as unknown as string[] | undefined) ?? [];
  if (type === undefined && filters.length === 0) return usage();
  return targetUsage(type, filters);
}

/** Whether argv asks for a command's usage (`ublk del --help`) rather than to run it. */
export function asksForHelp(argv: readonly string[]): boolean {
  return argv.some((arg) => arg === '--help' || arg === '-h');
}

/**
 * `ublk COMMAND --help`; for add, with the options of the target and filters it names, when it
 * names them.
 */
export async function commandHelp(name: CommandName, argv: readonly string[]): Promise<string> {
  if (name === 'help') return usage();
  let extra = '';
  if (name === 'add' && argv.some((arg) => /^(-t|--type|--filter)(=|$)|^-t./.test(arg))) {
    let type: string | undefined;
    try {
      type = findTargetType(argv);
    } catch {
      type = undefined; // only filters named
    }
    extra = await targetUsage(type, findFilters(argv));
  }
  return commandUsage(name) + extra;
}
