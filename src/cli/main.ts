#!/usr/bin/env node
import { accessSync, constants as fsConstants, existsSync, readFileSync } from 'node:fs';
import { UserError } from '../errors.js';
import { loadFilter, loadTarget } from '../ublk/target/loader.js';
import { BUILT_IN_FILTERS, filterSource, targetSource } from '../targets/registry.js';
import type { TargetOptionSpecs } from '../ublk/target/contract.js';
import { CONTROL_PATH, type Control } from '../ublk/control/control.js';
import { openControl } from '../ublk/control/control-errors.js';
import { parseDelArgs, parseListArgs, parseRecoverArgs } from './args.js';
import { parseAdd, startDaemon } from './add.js';
import { delCommand } from './del.js';
import { featuresCommand } from './features.js';
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

const USAGE = `ublk add -t TYPE
\t-n DEV_ID -q NR_HW_QUEUES -d QUEUE_DEPTH
\t-u URING_COMP -g NEED_GET_DATA -r USER_RECOVERY
\t-i USER_RECOVERY_REISSUE -e USER_RECOVERY_FAIL_IO
\t--max_io_buf_bytes BYTES --foreground
\t--auto_zc | --no_auto_zc (zero copy: by default where the kernel has it, Linux 6.16+,\n\t\tfor loop, mem and null)
\t--usercopy (user copy: read/write on /dev/ublkcN, no buffer per tag, Linux 6.5+)
\t-z | --zerocopy (zero copy by REGISTER_IO_BUF per request, Linux 6.15+, for loop, mem and null)
\t-b | --batch-io (batched fetch and commit commands, Linux 7.0+; with copy or any mode above)
\t--filter FILTER ... (repeatable; the first given wraps the others, as in nbdkit)
\tTYPE: null, loop, mem, nbd, or the path of a target module (./my-target.js)
\tFILTER: ${Object.keys(BUILT_IN_FILTERS).join(', ')}, or the path of a filter module (./my-filter.js)
\tFor type and filter specific options, run:
\t\tublk help -t <type> [--filter <filter>...]
ublk del -n DEV_ID [-a | --all]
ublk list [-n DEV_ID] [--json]
ublk recover -n DEV_ID [--start_empty] [--foreground]
\t(a device added with -r 1 whose daemon died: a new daemon takes it over)
ublk features
ublk help -t <target> [--filter <filter>...]
ublk help --filter <filter>
ublk -v [--version]
ublk -h [--help]
`;

/**
 * ublk control commands need CAP_SYS_ADMIN, except on an unprivileged device (Linux 6.3+), which
 * its owner controls through a /dev/ublk-control that udev's rule opened to users: say so before
 * the kernel answers EPERM.
 */
function requireControl(command: string): void {
  if (!existsSync(CONTROL_PATH)) {
    throw new UserError(
      `no ${CONTROL_PATH}: load the ublk driver with 'modprobe ublk_drv' (Linux 6.0+ built with CONFIG_BLK_DEV_UBLK)`,
    );
  }
  if (process.getuid?.() === 0) return;
  try {
    accessSync(CONTROL_PATH, fsConstants.R_OK | fsConstants.W_OK);
  } catch {
    throw new UserError(
      `${command} needs root (ublk control commands need CAP_SYS_ADMIN), or for an unprivileged device (--unprivileged) a ${CONTROL_PATH} open to users (udev/99-ublk-dev.rules): use sudo`,
    );
  }
}

async function withControl<T>(work: (control: Control) => Promise<T>): Promise<T> {
  const control = openControl();
  try {
    return await work(control);
  } finally {
    control.close();
  }
}

function optionLines(options: TargetOptionSpecs): string[] {
  return Object.entries(options).map(([name, spec]) => {
    const flag = `${spec.short ? `-${spec.short}, ` : ''}--${name}${spec.type === 'string' ? ' VALUE' : ''}`;
    return `\t${flag.padEnd(28)} ${spec.description}`;
  });
}

async function helpCommand(argv: string[]): Promise<string> {
  const typeAt = argv.findIndex((a) => a === '-t' || a === '--type');
  const filters = argv.flatMap((a, i) =>
    a === '--filter' && i + 1 < argv.length ? [argv[i + 1]] : [],
  );
  if ((typeAt < 0 || typeAt + 1 >= argv.length) && filters.length === 0) return USAGE;
  const lines: string[] = [];
  if (typeAt >= 0 && typeAt + 1 < argv.length) {
    const target = await loadTarget(targetSource(argv[typeAt + 1]));
    lines.push(
      `ublk add -t ${argv[typeAt + 1]} (target ${target.name})`,
      ...optionLines(target.options ?? {}),
    );
  }
  for (const name of filters) {
    const filter = await loadFilter(filterSource(name));
    lines.push(
      `ublk add --filter ${name} (filter ${filter.name})`,
      ...optionLines(filter.options ?? {}),
    );
  }
  return lines.join('\n') + '\n';
}

async function run(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'add': {
      // A bad UBLK_LIST_FORMAT fails before the device exists, not when it is printed.
      const layout = listLayout();
      const { options, source } = await parseAdd(rest);
      requireControl('ublk add');
      const job = { kind: 'add', options, targetSource: source } as const;
      const devId = options.foreground ? (await serve(job)).id : await startDaemon(job);
      process.stdout.write(
        await withControl((c) => listCommand(c, { devId, json: false, layout })),
      );
      // In the foreground, the device keeps this process alive until it is stopped.
      return 0;
    }
    case 'del':
      requireControl('ublk del');
      await withControl((c) => delCommand(c, parseDelArgs(rest)));
      return 0;
    case 'list': {
      const options = parseListArgs(rest);
      requireControl('ublk list');
      process.stdout.write(await withControl((c) => listCommand(c, options)));
      return 0;
    }
    case 'features':
      requireControl('ublk features');
      process.stdout.write(await withControl(featuresCommand));
      return 0;
    case 'recover': {
      const layout = listLayout();
      const options = parseRecoverArgs(rest);
      requireControl('ublk recover');
      const devId = await withControl((c) => recoverCommand(c, options));
      process.stdout.write(
        await withControl((c) => listCommand(c, { devId, json: false, layout })),
      );
      // In the foreground, the device keeps this process alive until it is stopped.
      return 0;
    }
    case 'quiesce':
      requireControl('ublk quiesce');
      process.stdout.write(await withControl((c) => quiesceCommand(c, rest)));
      return 0;
    case 'update_size':
      requireControl('ublk update_size');
      await withControl((c) => updateSizeCommand(c, rest));
      return 0;
    case 'chown':
      requireControl('ublk chown');
      await withControl((c) => chownCommand(c, rest));
      return 0;
    case 'help':
    case '-h':
    case '--help':
      process.stdout.write(await helpCommand(rest));
      return 0;
    case '-v':
    case '--version':
      process.stdout.write(`ublk-ts ${VERSION}\n`);
      return 0;
    case undefined:
      process.stderr.write(`ublk: missing command\n${USAGE}`);
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
