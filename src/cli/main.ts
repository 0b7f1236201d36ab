#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { UserError } from '../errors.js';
import type { Control } from '../ublk/control/control.js';
import { openControl } from '../ublk/control/control-errors.js';
import { parseAdd, startDaemon } from './add.js';
import {
  parseChownArgs,
  parseDelArgs,
  parseFeaturesArgs,
  parseListArgs,
  parseQuiesceArgs,
  parseRecoverArgs,
  parseUpdateSizeArgs,
} from './args.js';
import { isCommand, type CommandName } from './commands.js';
import { requireControl } from './control-access.js';
import { delCommand } from './del.js';
import { featuresCommand } from './features.js';
import { asksForHelp, commandHelp, helpCommand, usage } from './help.js';
import { listCommand } from './list.js';
import { listLayout } from './list-format.js';
import { chownCommand, quiesceCommand, updateSizeCommand } from './manage.js';
import { recoverCommand } from './recover.js';
import { serve } from './serve.js';

const VERSION = (
  JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  }
).version;

async function withControl<T>(work: (control: Control) => Promise<T>): Promise<T> {
  const control = openControl();
  try {
    return await work(control);
  } finally {
    control.close();
  }
}

/**
 * Each command of the table (commands.ts), run with its arguments: its options parsed first, so
 * that a bad one is reported before a host without ublk is.
 */
const RUN: Record<CommandName, (argv: string[]) => Promise<number>> = {
  async add(argv) {
    // A bad UBLK_LIST_FORMAT fails before the device exists, not when it is printed.
    const layout = listLayout();
    const { options, source } = await parseAdd(argv);
    requireControl(['add', ...argv]);
    const job = { kind: 'add', options, targetSource: source } as const;
    const devId = options.foreground ? (await serve(job)).id : await startDaemon(job);
    process.stdout.write(await withControl((c) => listCommand(c, { devId, json: false, layout })));
    // In the foreground, the device keeps this process alive until it is stopped.
    return 0;
  },
  async del(argv) {
    const options = parseDelArgs(argv);
    requireControl(['del', ...argv]);
    await withControl((c) => delCommand(c, options));
    return 0;
  },
  async list(argv) {
    const options = parseListArgs(argv);
    requireControl(['list', ...argv]);
    process.stdout.write(await withControl((c) => listCommand(c, options)));
    return 0;
  },
  async recover(argv) {
    const layout = listLayout();
    const options = parseRecoverArgs(argv);
    requireControl(['recover', ...argv]);
    const devId = await withControl((c) => recoverCommand(c, options));
    process.stdout.write(await withControl((c) => listCommand(c, { devId, json: false, layout })));
    // In the foreground, the device keeps this process alive until it is stopped.
    return 0;
  },
  async quiesce(argv) {
    const options = parseQuiesceArgs(argv);
    requireControl(['quiesce', ...argv]);
    process.stdout.write(await withControl((c) => quiesceCommand(c, options)));
    return 0;
  },
  async update_size(argv) {
    const options = parseUpdateSizeArgs(argv);
    requireControl(['update_size', ...argv]);
    await withControl((c) => updateSizeCommand(c, options));
    return 0;
  },
  async features(argv) {
    parseFeaturesArgs(argv);
    requireControl(['features', ...argv]);
    process.stdout.write(await withControl(featuresCommand));
    return 0;
  },
  async chown(argv) {
    const options = parseChownArgs(argv);
    requireControl(['chown', ...argv]);
    await withControl((c) => chownCommand(c, options));
    return 0;
  },
  async help(argv) {
    process.stdout.write(await helpCommand(argv));
    return 0;
  },
};

async function run(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (isCommand(command)) {
    if (asksForHelp(rest)) {
      process.stdout.write(await commandHelp(command, rest));
      return 0;
    }
    return RUN[command](rest);
  }
  switch (command) {
    case '-h':
    case '--help':
      return RUN.help(rest);
    case '-v':
    case '--version':
      process.stdout.write(`ublk-ts ${VERSION}\n`);
      return 0;
    case undefined:
      process.stderr.write(`ublk: missing command\n${usage()}`);
      return 1;
    default:
      throw new UserError(`unknown command '${command}': run 'ublk help'`);
  }
}

try {
  process.exitCode = await run(process.argv.slice(2));
} catch (err) {
  if (err instanceof UserError) {
    console.error(`ublk: ${err.message}`);
  } else {
    console.error(`ublk: ${(err as Error).message ?? String(err)}`);
    if (process.env.UBLK_DEBUG) console.error(err);
  }
  process.exitCode = 1;
}
