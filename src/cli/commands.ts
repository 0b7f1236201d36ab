/**
 * Every `ublk` command and every option its parser accepts, each declared once with its help
 * text: the parsers (args.ts, manage.ts) take their parseArgs tables from here and `ublk help`
 * prints from here, so neither can know an option the other does not. A target's and a filter's
 * own options come from the module (`ublk help -t TYPE`), not from this table.
 */
import type { ParseArgsConfig } from 'node:util';
import { BUILT_IN_FILTERS, BUILT_IN_TARGETS } from '../targets/registry.js';

/** `add`'s defaults and limits, which its help states and its parser applies. */
export const ADD_DEFAULTS = { queues: 1, depth: 128, maxIoBufBytes: 512 * 1024 } as const;
export const MAX_QUEUES = 4096;
export const MAX_DEPTH = 4096;
export const MAX_IO_BUF_BYTES = 32 << 20;

export interface OptionDoc {
  type: 'string' | 'boolean';
  short?: string;
  multiple?: boolean;
  /** The value's name in help (DEV_ID); string options only. */
  value?: string;
  /** Shown without brackets in the command's synopsis. */
  required?: boolean;
  help: string;
}

export interface CommandDoc {
  summary: string;
  /** Positional operands, as the synopsis shows them (chown's NODE). */
  operands?: string;
  options: Readonly<Record<string, OptionDoc>>;
  /** Lines printed after the options. */
  notes?: readonly string[];
}

const DEV_ID = { type: 'string', short: 'n', value: 'DEV_ID' } as const;

/** ublksrv's `add` options, under ublksrv's names and letters so that its scripts keep working. */
const ADD = {
  type: {
    type: 'string',
    short: 't',
    value: 'TYPE',
    required: true,
    help: `${Object.keys(BUILT_IN_TARGETS).join(', ')}, or the path of a target module (./my-target.js)`,
  },
  number: { ...DEV_ID, help: 'the device id (default: the kernel picks one)' },
  queues: {
    type: 'string',
    short: 'q',
    value: 'NR_HW_QUEUES',
    help: `queues, one thread each (default ${ADD_DEFAULTS.queues}, at most ${MAX_QUEUES})`,
  },
  depth: {
    type: 'string',
    short: 'd',
    value: 'QUEUE_DEPTH',
    help: `requests in flight per queue (default ${ADD_DEFAULTS.depth}, at most ${MAX_DEPTH})`,
  },
  uring_comp: {
    type: 'string',
    short: 'u',
    value: '0|1',
    help: '1: complete commands in task context (UBLK_F_URING_CMD_COMP_IN_TASK)',
  },
  need_get_data: {
    type: 'string',
    short: 'g',
    value: '0|1',
    help: "1: a WRITE's data is fetched by a second command (UBLK_F_NEED_GET_DATA); copy only",
  },
  user_recovery: {
    type: 'string',
    short: 'r',
    value: '0|1',
    help: "1: the device outlives its daemon; 'ublk recover' gives it a new one (6.1+)",
  },
  user_recovery_reissue: {
    type: 'string',
    short: 'i',
    value: '0|1',
    help: "1: as -r 1, and the dead daemon's requests are issued again to the new one (6.1+)",
  },
  user_recovery_fail_io: {
    type: 'string',
    short: 'e',
    value: '0|1',
    help: '1: as -r 1, and I/O fails at once while no daemon serves the device (6.13+)',
  },
  max_io_buf_bytes: {
    type: 'string',
    value: 'BYTES',
    help: `the largest request, a multiple of the page size (default ${ADD_DEFAULTS.maxIoBufBytes})`,
  },
  foreground: {
    type: 'boolean',
    help: 'serve the device from this process, until it is deleted or interrupted, not a daemon',
  },
  zerocopy: {
    type: 'boolean',
    short: 'z',
    help: 'zero copy as ublksrv 1.8 (automatic buffer registration where the kernel has it, manual otherwise)',
  },
  auto_zc: { type: 'boolean', help: 'automatic buffer registration only (6.16+)' },
  manual_zc: { type: 'boolean', help: "manual zero copy, kublk's -z (6.15+)" },
  no_auto_zc: {
    type: 'boolean',
    help: 'copy: per-tag buffers, the handlers see the data (no zero copy even where it could be)',
  },
  usercopy: { type: 'boolean', help: 'user copy (6.5+)' },
  'batch-io': {
    type: 'boolean',
    short: 'b',
    help: 'batched fetch and commit commands (7.0+), with any of the data paths above',
  },
  unprivileged: {
    type: 'boolean',
    help: 'a device of the calling user, controlled without root (6.3+; udev/99-ublk-dev.rules)',
  },
  no_auto_part_scan: {
    type: 'boolean',
    help: 'no partition scan when the device starts (7.0+)',
  },
  debug_mask: {
    type: 'string',
    value: '0xMASK',
    help: 'bit 0: log every failed request to the daemon log',
  },
  filter: {
    type: 'string',
    multiple: true,
    value: 'FILTER',
    help: `${Object.keys(BUILT_IN_FILTERS).join(', ')}, or the path of a filter module (./my-filter.js); repeatable, the first given outermost, as in nbdkit`,
  },
} as const satisfies Record<string, OptionDoc>;

const DEL = {
  number: { ...DEV_ID, help: 'the device' },
  all: { type: 'boolean', short: 'a', help: 'every device, instead of -n' },
  async: {
    type: 'boolean',
    help: 'delete with DEL_DEV_ASYNC (6.9+): do not wait for the disk to be released',
  },
  safe: {
    type: 'boolean',
    help: 'refuse, leaving the device served, while its disk is open (TRY_STOP_DEV, 7.0+)',
  },
} as const satisfies Record<string, OptionDoc>;

const LIST = {
  number: { ...DEV_ID, help: 'only this device' },
  json: { type: 'boolean', help: "each device's full record, as JSON" },
  verbose: { type: 'boolean', short: 'v', help: 'as --json (ublksrv -v)' },
} as const satisfies Record<string, OptionDoc>;

const RECOVER = {
  number: { ...DEV_ID, required: true, help: 'the device, added with -r 1, -i 1 or -e 1' },
  type: {
    type: 'string',
    short: 't',
    value: 'TYPE',
    help: "ignored, for ublksrv's scripts: the target is the one the device was added with",
  },
  start_empty: {
    type: 'boolean',
    help: 'accept losing the data of a target that cannot keep it across daemons (mem)',
  },
  foreground: { type: 'boolean', help: 'serve the device from this process, not a daemon' },
} as const satisfies Record<string, OptionDoc>;

const HELP = {
  type: { type: 'string', short: 't', value: 'TYPE', help: "a target's own options" },
  filter: {
    type: 'string',
    multiple: true,
    value: 'FILTER',
    help: "a filter's own options; repeatable",
  },
} as const satisfies Record<string, OptionDoc>;

/** The commands, in the order `ublk help` lists them (ublksrv's first). */
export const COMMANDS = {
  add: {
    summary: 'add a device and start its daemon; prints the device as list does',
    options: ADD,
    notes: [
      'Data path, one of -z, --auto_zc, --manual_zc, --no_auto_zc, --usercopy: by default',
      'automatic buffer registration where the target and the kernel can (6.16+), else copy.',
      'For type and filter specific options, run:',
      '\tublk help -t <type> [--filter <filter>...]',
    ],
  },
  del: {
    summary: 'stop and delete a device (or all), ending its daemon',
    options: DEL,
  },
  list: {
    summary: 'show devices; UBLK_LIST_FORMAT=1.3 for the older text layout',
    options: LIST,
  },
  recover: {
    summary: 'a new daemon takes over a device whose daemon died',
    options: RECOVER,
  },
  quiesce: {
    summary:
      "QUIESCE_DEV (6.16+, a device added with -r 1): hold its requests and let its daemon go, for 'ublk recover' to start a new one",
    options: { number: { ...DEV_ID, required: true, help: 'the device' } },
  },
  update_size: {
    summary: 'UPDATE_SIZE (6.16+): change the size of a running device',
    options: {
      number: { ...DEV_ID, required: true, help: 'the device' },
      size: {
        type: 'string',
        short: 's',
        value: 'SIZE',
        required: true,
        help: 'the new size: bytes, or with a suffix (512M, 2G)',
      },
    },
  },
  features: {
    summary: "the kernel's ublk feature flags",
    options: {},
  },
  chown: {
    summary:
      'give the node of an unprivileged device to its owner (what udev/99-ublk-dev.rules runs)',
    operands: 'ublkcN|ublkbN',
    options: {},
  },
  help: {
    summary: "this text; with -t or --filter, a target's or filter's own add options",
    options: HELP,
  },
} as const satisfies Record<string, CommandDoc>;

export type CommandName = keyof typeof COMMANDS;

/** Options that stand in place of a command. */
export const GLOBAL_OPTIONS = {
  version: { type: 'boolean', short: 'v', help: 'the version' },
  help: { type: 'boolean', short: 'h', help: "as 'ublk help'; after a command, its own usage" },
} as const satisfies Record<string, OptionDoc>;

export function isCommand(name: string | undefined): name is CommandName {
  return name !== undefined && Object.hasOwn(COMMANDS, name);
}

/** A command's options as node:util parseArgs takes them. */
function parseConfig(
  options: Readonly<Record<string, OptionDoc>>,
): NonNullable<ParseArgsConfig['options']> {
  const config: NonNullable<ParseArgsConfig['options']> = {};
  for (const [name, option] of Object.entries(options)) {
    config[name] = {
      type: option.type,
      ...(option.short ? { short: option.short } : {}),
      ...(option.multiple ? { multiple: true } : {}),
    };
  }
  return config;
}

export function commandOptions(command: CommandName): NonNullable<ParseArgsConfig['options']> {
  return parseConfig(COMMANDS[command].options);
}
