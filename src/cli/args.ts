import { resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UserError } from '../errors.js';
import { constants } from '../sys.js';
import type { TargetArgs, TargetOptionSpecs } from '../ublk/target/contract.js';
import type { DataPath } from '../ublk/device/data-path.js';
import {
  ADD_DEFAULTS,
  commandOptions,
  MAX_DEPTH,
  MAX_IO_BUF_BYTES,
  MAX_QUEUES,
} from './commands.js';
import { listLayout, type ListLayout } from './list-format.js';
import { parseBool01, parseInteger, parseSize } from './numbers.js';

// The target API's types, re-exported for the CLI code that imports them from here.
export type { TargetArgs, TargetOptionSpec, TargetOptionSpecs } from '../ublk/target/contract.js';

export interface AddOptions {
  type: string;
  /** -1 lets the kernel pick. */
  devId: number;
  queues: number;
  depth: number;
  maxIoBufBytes: number;
  uringComp: boolean;
  needGetData: boolean;
  userRecovery: boolean;
  userRecoveryReissue: boolean;
  userRecoveryFailIo: boolean;
  /** kublk's --no_auto_part_scan: UBLK_F.NO_AUTO_PART_SCAN (7.0+). */
  noAutoPartScan: boolean;
  /** ublksrv's --unprivileged: UBLK_F_UNPRIVILEGED_DEV (6.3+), a device its non-root user owns. */
  unprivileged: boolean;
  foreground: boolean;
  /**
   * The data path: --usercopy (user-copy), -z/--zerocopy (zero-copy: ublksrv 1.8's, auto zero copy
   * where the kernel has it, else manual), --auto_zc (auto-zero-copy), --manual_zc
   * (manual-zero-copy, kublk's -z), --no_auto_zc alone (copy); 'auto' without any.
   */
  dataPath: DataPath;
  /** ublksrv's -b/--batch-io: UBLK_F_BATCH_IO (7.0+), batched fetch and commit commands. */
  batchIo?: boolean;
  /** ublksrv's --debug_mask: bit 0 (DEBUG_EVERY_FAILURE) logs every failed request. */
  debugMask: number;
  /** --filter, as given, first outermost; their options are in targetArgs with the target's. */
  filters?: string[];
  targetArgs: TargetArgs;
}

const { PAGE_SIZE } = constants;

/** Every option `add` has before the target's own (commands.ts has their help). */
const ADD_OPTIONS = commandOptions('add');

export function isAddOption(name: string): boolean {
  return Object.hasOwn(ADD_OPTIONS, name);
}

/**
 * The --filter values in order, before the full parse, because the filters decide which other
 * options exist. The first given is the outermost, as in nbdkit.
 */
export function findFilters(argv: readonly string[]): string[] {
  const filters: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--filter') {
      if (i + 1 >= argv.length || argv[i + 1].startsWith('-')) {
        throw new UserError(
          'add: --filter needs a filter: cow, delay, error, readonly, stats or ./module.js',
        );
      }
      filters.push(argv[++i]);
    } else if (arg.startsWith('--filter=')) {
      filters.push(arg.slice('--filter='.length));
    }
  }
  return filters;
}

/** Finds `-t TYPE` before the full parse, because the type decides which other options exist. */
export function findTargetType(argv: readonly string[]): string {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '-t' || arg === '--type') {
      if (i + 1 < argv.length) return argv[i + 1];
      break;
    }
    if (arg.startsWith('--type=')) return arg.slice('--type='.length);
    if (arg.startsWith('-t') && arg.length > 2) return arg.slice(2);
  }
  throw new UserError('no target type given: use -t TYPE (null, loop, mem, nbd or ./module.js)');
}

export function strictParse(
  command: string,
  argv: readonly string[],
  options: ParseArgsConfig['options'],
): Record<string, string | boolean | undefined> {
  return parseStrictly(command, argv, options, false).values;
}

function parseStrictly(
  command: string,
  argv: readonly string[],
  options: ParseArgsConfig['options'],
  allowPositionals: boolean,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const parsed = parseArgs({ args: [...argv], options, strict: true, allowPositionals });
    return {
      values: parsed.values as Record<string, string | boolean | undefined>,
      positionals: parsed.positionals,
    };
  } catch (err) {
    const reason = (err as Error).message.split('\n')[0].replace(/\.$/, '');
    throw new UserError(`${command}: ${reason}; run 'ublk help' for usage`);
  }
}

export function parseAddArgs(
  argv: readonly string[],
  targetOptions: TargetOptionSpecs,
): AddOptions {
  for (const name of Object.keys(targetOptions)) {
    if (name in ADD_OPTIONS) throw new Error(`target option --${name} clashes`);
  }
  const values = strictParse('add', argv, { ...ADD_OPTIONS, ...targetOptions });
  const str = (name: string) => values[name] as string | undefined;
  const flag = (name: string, what: string) => {
    const text = str(name);
    return text === undefined ? false : parseBool01(text, what);
  };
  const maxIoBufBytes =
    str('max_io_buf_bytes') === undefined
      ? ADD_DEFAULTS.maxIoBufBytes
      : parseInteger(str('max_io_buf_bytes')!, 'max_io_buf_bytes', PAGE_SIZE, MAX_IO_BUF_BYTES);
  if (maxIoBufBytes % PAGE_SIZE !== 0) {
    throw new UserError(
      `invalid max_io_buf_bytes ${maxIoBufBytes}: must be a multiple of the page size (${PAGE_SIZE})`,
    );
  }
  const targetArgs: TargetArgs = {};
  for (const [name, spec] of Object.entries(targetOptions)) {
    const value = values[name];
    targetArgs[name] =
      spec.path && typeof value === 'string' && value !== '' ? resolve(value) : value;
  }
  const reissue = flag('user_recovery_reissue', 'user_recovery_reissue (-i)');
  const failIo = flag('user_recovery_fail_io', 'user_recovery_fail_io (-e)');
  return {
    type: str('type')!,
    devId: str('number') === undefined ? -1 : parseInteger(str('number')!, 'device id', 0, 0xfffff),
    queues:
      str('queues') === undefined
        ? ADD_DEFAULTS.queues
        : parseInteger(str('queues')!, 'queue count', 1, MAX_QUEUES),
    depth:
      str('depth') === undefined
        ? ADD_DEFAULTS.depth
        : parseInteger(str('depth')!, 'queue depth', 1, MAX_DEPTH),
    maxIoBufBytes,
    uringComp: flag('uring_comp', 'uring_comp (-u)'),
    needGetData: flag('need_get_data', 'need_get_data (-g)'),
    // As in ublksrv, reissue and fail-io imply recovery.
    userRecovery: flag('user_recovery', 'user_recovery (-r)') || reissue || failIo,
    userRecoveryReissue: reissue,
    userRecoveryFailIo: failIo,
    noAutoPartScan: values.no_auto_part_scan === true,
    unprivileged: values.unprivileged === true,
    foreground: values.foreground === true,
    dataPath: dataPathOf(values),
    batchIo: values['batch-io'] === true,
    debugMask:
      str('debug_mask') === undefined
        ? 0
        : parseInteger(str('debug_mask')!, 'debug_mask', 0, 0xffff_ffff),
    filters: (values.filter as unknown as string[] | undefined) ?? [],
    targetArgs,
  };
}

/**
 * Each data-path flag of `add`: as messages name it (-z, as help and docs lead with it), its
 * parseArgs key, and the data path it asks for. --no_auto_zc (copy) is the one without a key here.
 */
export const DATA_PATH_FLAGS = [
  ['--usercopy', 'usercopy', 'user-copy'],
  ['-z', 'zerocopy', 'zero-copy'],
  ['--auto_zc', 'auto_zc', 'auto-zero-copy'],
  ['--manual_zc', 'manual_zc', 'manual-zero-copy'],
] as const satisfies readonly (readonly [string, string, DataPath])[];

/** At most one data-path flag; --no_auto_zc alone is copy, and nothing is the default. */
function dataPathOf(values: Record<string, string | boolean | undefined>): DataPath {
  const given = DATA_PATH_FLAGS.filter(([, key]) => values[key] === true);
  if (given.length > 1) {
    throw new UserError(
      `${given[0][0]} and ${given[1][0]} exclude each other: choose one data path`,
    );
  }
  if (given.length === 1 && values.no_auto_zc === true) {
    throw new UserError(`${given[0][0]} and --no_auto_zc exclude each other`);
  }
  if (given.length === 1) return given[0][2];
  return values.no_auto_zc === true ? 'copy' : 'auto';
}

export interface DelOptions {
  /** undefined with `all`. */
  devId?: number;
  all: boolean;
  async: boolean;
  /** kublk's `stop --safe`: TRY_STOP_DEV, refused while the block device is open (7.0+). */
  safe: boolean;
}

export function parseDelArgs(argv: readonly string[]): DelOptions {
  const values = strictParse('del', argv, commandOptions('del'));
  const all = values.all === true;
  if (values.number === undefined && !all) {
    throw new UserError('del: say which device: -n DEV_ID, or -a for all');
  }
  return {
    devId: all ? undefined : parseInteger(values.number as string, 'device id', 0, 0xfffff),
    all,
    async: values.async === true,
    safe: values.safe === true,
  };
}

export interface ListOptions {
  devId?: number;
  json: boolean;
  /** The text layout, from UBLK_LIST_FORMAT. */
  layout: ListLayout;
}

export function parseListArgs(
  argv: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): ListOptions {
  const values = strictParse('list', argv, commandOptions('list'));
  return {
    devId:
      values.number === undefined
        ? undefined
        : parseInteger(values.number as string, 'device id', 0, 0xfffff),
    json: values.json === true || values.verbose === true,
    layout: listLayout(env),
  };
}

export interface RecoverOptions {
  devId: number;
  /** Accept losing the data of a target that cannot keep it across daemons (mem). */
  startEmpty: boolean;
  foreground: boolean;
}

export function parseRecoverArgs(argv: readonly string[]): RecoverOptions {
  const values = strictParse('recover', argv, commandOptions('recover'));
  if (values.number === undefined) throw new UserError('recover: say which device: -n DEV_ID');
  return {
    devId: parseInteger(values.number as string, 'device id', 0, 0xfffff),
    startEmpty: values.start_empty === true,
    foreground: values.foreground === true,
  };
}

export interface QuiesceOptions {
  devId: number;
}

function requiredDeviceId(command: string, values: Record<string, unknown>): number {
  if (values.number === undefined) throw new UserError(`${command}: say which device: -n DEV_ID`);
  return parseInteger(values.number as string, 'device id', 0, 0xfffff);
}

export function parseQuiesceArgs(argv: readonly string[]): QuiesceOptions {
  return {
    devId: requiredDeviceId('quiesce', strictParse('quiesce', argv, commandOptions('quiesce'))),
  };
}

export interface UpdateSizeOptions {
  devId: number;
  /** Bytes. */
  size: number;
}

export function parseUpdateSizeArgs(argv: readonly string[]): UpdateSizeOptions {
  const values = strictParse('update_size', argv, commandOptions('update_size'));
  const devId = requiredDeviceId('update_size', values);
  if (values.size === undefined) throw new UserError('update_size: say the new size: --size SIZE');
  return { devId, size: parseSize(values.size as string, 'size') };
}

export interface ChownOptions {
  /** The node's name, as udev's %k gives it: ublkcN, ublkbN or ublkbNpM. */
  name: string;
  devId: number;
}

export function parseChownArgs(argv: readonly string[]): ChownOptions {
  const { positionals } = parseStrictly('chown', argv, commandOptions('chown'), true);
  const name = positionals[0];
  const m = name === undefined ? null : /^ublk[bc](\d+)(p\d+)?$/.exec(name);
  if (!m || positionals.length !== 1) {
    throw new UserError('chown: say which node: ublk chown ublkcN|ublkbN (what udev passes as %k)');
  }
  return { name, devId: Number(m[1]) };
}

/** `ublk features` takes no options. */
export function parseFeaturesArgs(argv: readonly string[]): void {
  strictParse('features', argv, commandOptions('features'));
}
