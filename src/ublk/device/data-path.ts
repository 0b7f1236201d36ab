/**
 * How request data travels between the kernel and the daemon, decided once, in the main thread,
 * from the device options, the target's capabilities and what the kernel reports (GET_FEATURES):
 * one plain object the queue threads consult. Every refusal of a combination is one of the tables
 * here, worded in the API's option names; the CLI words the same error in its own flags.
 */
import { UserError } from '../../errors.js';
import { UBLK_F } from '../ublk-cmd.js';
import { hasFlag, missingFeature } from '../control/feature-flags.js';
import type { Capabilities } from '../target/contract.js';

/**
 * DeviceOptions.dataPath. 'auto' (the default): auto zero copy where the target declares
 * zeroCopy: true and the kernel grants AUTO_BUF_REG (neither needGetData nor unprivileged), else
 * copy. 'zero-copy' is ublksrv 1.8's -z: AUTO_BUF_REG where the kernel has it, else
 * SUPPORT_ZERO_COPY.
 */
export type DataPath = (typeof DATA_PATHS)[number];

/** Every DataPath, for the run-time check of a JavaScript caller's options. */
export const DATA_PATHS = [
  'auto',
  'copy',
  'user-copy',
  'zero-copy',
  'auto-zero-copy',
  'manual-zero-copy',
] as const;

/** What a device runs with once 'auto' and 'zero-copy' are resolved. */
export type DataPathMode = 'copy' | 'user-copy' | 'auto-zero-copy' | 'manual-zero-copy';

/** The resolved data path: what the queue worker data carries and the queue thread consults. */
export interface ResolvedDataPath {
  /**
   * copy: a buffer per tag the kernel copies to and from. user-copy (UBLK_F_USER_COPY): a bounce
   * pool the daemon fills with read/write on /dev/ublkcN. auto-zero-copy (UBLK_F_AUTO_BUF_REG):
   * no buffers, the kernel registers each request's pages at the tag's index of the ring's buffer
   * table. manual-zero-copy (UBLK_F_SUPPORT_ZERO_COPY): likewise, registered by each forwarded
   * request's REGISTER_IO_BUF.
   */
  mode: DataPathMode;
  /** UBLK_F_BATCH_IO: batched fetch and commit commands (batch-io.ts). */
  batch: boolean;
  /** The UBLK_F flags of the mode and of batch IO. */
  flags: number;
}

const MODE_FLAG: Readonly<Record<DataPathMode, number>> = {
  copy: 0,
  'user-copy': UBLK_F.USER_COPY,
  'auto-zero-copy': UBLK_F.AUTO_BUF_REG,
  'manual-zero-copy': UBLK_F.SUPPORT_ZERO_COPY,
};

export function dataPathOf(mode: DataPathMode, batch = false): ResolvedDataPath {
  return { mode, batch, flags: MODE_FLAG[mode] + (batch ? UBLK_F.BATCH_IO : 0) };
}

/** A device's data path from the flags the kernel granted it: how a recovered device runs. */
export function dataPathOfFlags(flags: number): ResolvedDataPath {
  const mode = (Object.keys(MODE_FLAG) as DataPathMode[]).find(
    (m) => MODE_FLAG[m] !== 0 && hasFlag(flags, MODE_FLAG[m]),
  );
  return dataPathOf(mode ?? 'copy', hasFlag(flags, UBLK_F.BATCH_IO));
}

/** A device option (with its value, for dataPath) as the API names it. */
export type OptionTerm =
  `dataPath '${DataPath}'` | 'batch' | 'needGetData' | 'unprivileged' | 'recovery';

/** What an option term is, for sentences such as "user copy (--usercopy) needs ...". */
const DESCRIPTION: Readonly<Record<OptionTerm, string>> = {
  "dataPath 'auto'": 'the default data path',
  "dataPath 'copy'": 'copy',
  "dataPath 'user-copy'": 'user copy',
  "dataPath 'zero-copy'": 'zero copy',
  "dataPath 'auto-zero-copy'": 'auto zero copy',
  "dataPath 'manual-zero-copy'": 'manual zero copy',
  batch: 'batch IO',
  needGetData: 'NEED_GET_DATA',
  unprivileged: 'an unprivileged device',
  recovery: 'recovery',
};

/** How a caller names the options: the API's own names, or the CLI's flags. */
export interface OptionWords {
  name(term: OptionTerm): string;
  /** The sentence saying two options exclude each other. */
  exclude(a: string, b: string): string;
}

const API_WORDS: OptionWords = {
  name: (term) => term,
  exclude: (a, b) => `${a} excludes ${b}`,
};

const USER_OPTION_ERROR = Symbol.for('ublk-ts.DeviceOptionError');

/**
 * A refused device option or combination: a UserError worded in the API's names, which the CLI
 * words again in its flags (`inWords`).
 */
export class DeviceOptionError extends UserError {
  readonly [USER_OPTION_ERROR] = true;

  constructor(
    private readonly words: (w: OptionWords & { what(term: OptionTerm): string }) => string,
  ) {
    super(words(withWhat(API_WORDS)));
  }

  /** The message with the options named as `words` names them. */
  inWords(words: OptionWords): string {
    return this.words(withWhat(words));
  }
}

export function isDeviceOptionError(err: unknown): err is DeviceOptionError {
  return (
    typeof err === 'object' &&
    err !== null &&
    (err as { [USER_OPTION_ERROR]?: unknown })[USER_OPTION_ERROR] === true
  );
}

/** "user copy (--usercopy)" */
function withWhat(words: OptionWords): OptionWords & { what(term: OptionTerm): string } {
  return { ...words, what: (term) => `${DESCRIPTION[term]} (${words.name(term)})` };
}

/** The refusal of an option this kernel's driver lacks the flag for, naming the first kernel. */
export function missingOptionFeature(term: OptionTerm, flag: number): DeviceOptionError {
  return new DeviceOptionError((w) => missingFeature(w.what(term), flag).message);
}

/** Pairs of options that exclude each other, and why. */
const EXCLUSIONS: readonly (readonly [OptionTerm, OptionTerm, string])[] = [
  ...(['user-copy', 'zero-copy', 'auto-zero-copy', 'manual-zero-copy'] as const).map(
    (path) =>
      [
        `dataPath '${path}'`,
        'needGetData',
        'NEED_GET_DATA is a copy data path flag, which the kernel drops',
      ] as const,
  ),
  ['batch', 'needGetData', 'the kernel drops NEED_GET_DATA from a batch IO device'],
  ["dataPath 'user-copy'", 'unprivileged', 'the kernel allows user copy to root only'],
  ["dataPath 'auto-zero-copy'", 'unprivileged', 'the kernel allows zero copy to root only'],
  ["dataPath 'manual-zero-copy'", 'unprivileged', 'the kernel allows zero copy to root only'],
  ['recovery', 'unprivileged', 'the kernel allows recovery to root only'],
];

/** What the data path is asked for with, from DeviceOptions. */
export interface DataPathRequest {
  dataPath: DataPath;
  batch: boolean;
  needGetData: boolean;
  unprivileged: boolean;
  recovery: boolean;
}

/** The options of a request that take part in refusals. */
function termsOf(request: DataPathRequest, mode?: DataPathMode): Set<OptionTerm> {
  const terms = new Set<OptionTerm>([`dataPath '${request.dataPath}'`]);
  if (mode) terms.add(`dataPath '${mode}'`);
  if (request.batch) terms.add('batch');
  if (request.needGetData) terms.add('needGetData');
  if (request.unprivileged) terms.add('unprivileged');
  if (request.recovery) terms.add('recovery');
  return terms;
}

/**
 * Refuses options that exclude each other, before anything is made; `resolved` is what 'zero-copy'
 * became, checked again once known.
 */
export function refuseExclusions(request: DataPathRequest, resolved?: DataPathMode): void {
  const terms = termsOf(request, resolved);
  for (const [a, b, why] of EXCLUSIONS) {
    if (terms.has(a) && terms.has(b)) {
      // Named as asked: 'zero-copy' that became manual zero copy is refused as 'zero-copy'.
      const asked = a === `dataPath '${resolved}'` ? `dataPath '${request.dataPath}'` : a;
      const first = asked as OptionTerm;
      throw new DeviceOptionError((w) => `${w.exclude(w.name(first), w.name(b))}: ${why}`);
    }
  }
}

/** What a mode needs of the target: handlers that never touch the data, or that move it as ring IO. */
function refuseTarget(term: OptionTerm, mode: DataPathMode, caps: Capabilities, servedBy: string) {
  const zeroCopy = caps.zeroCopy;
  if (mode === 'auto-zero-copy' && zeroCopy !== true && zeroCopy !== 'handlers') {
    throw new DeviceOptionError(
      (w) =>
        `${servedBy} handles request data in JavaScript, so it cannot use ${w.what(term)}: that needs a target declaring zeroCopy (loop, mem, null; nbd unless Node does its TLS records)`,
    );
  }
  if (mode === 'manual-zero-copy' && zeroCopy === 'handlers') {
    throw new DeviceOptionError(
      (w) =>
        `${servedBy} moves request data itself, which needs the kernel to lend it the pages: use ${w.name("dataPath 'auto-zero-copy'")}, not ${w.name(term)}`,
    );
  }
  if (mode === 'manual-zero-copy' && zeroCopy !== true) {
    throw new DeviceOptionError(
      (w) =>
        `${servedBy} handles request data in JavaScript, so it cannot use ${w.what(term)}: that needs a target declaring zeroCopy (loop, mem, null)`,
    );
  }
}

/** The mode 'auto' and 'zero-copy' stand for here; the others are themselves. */
function chooseMode(request: DataPathRequest, caps: Capabilities, features: number): DataPathMode {
  const autoBufReg = hasFlag(features, UBLK_F.AUTO_BUF_REG);
  switch (request.dataPath) {
    case 'auto':
      // Not for handlers that move the data as ring IO (nbd): a round trip per move, where a copy
      // did it in one for many requests (docs/performance.md#decisions, "nbd zero copy only when
      // asked"). Nor with a copy-mode flag, nor for an unprivileged device (zero copy lends a
      // request's pages to the server).
      return caps.zeroCopy === true && autoBufReg && !request.needGetData && !request.unprivileged
        ? 'auto-zero-copy'
        : 'copy';
    case 'zero-copy':
      return autoBufReg || caps.zeroCopy === 'handlers' ? 'auto-zero-copy' : 'manual-zero-copy';
    default:
      return request.dataPath;
  }
}

/**
 * The data path of a new device, or the refusal of what cannot work, in this order: options that
 * exclude each other, what the target cannot do, what the kernel lacks (naming the first kernel
 * that has it). `features` is GET_FEATURES (undefined before 6.5, which has none of these modes).
 */
export function resolveDataPath(
  request: DataPathRequest,
  target: { capabilities: Capabilities; servedBy: string },
  features: number | undefined,
): ResolvedDataPath {
  refuseExclusions(request);
  const kernel = features ?? 0;
  const mode = chooseMode(request, target.capabilities, kernel);
  if (mode !== request.dataPath) refuseExclusions(request, mode);
  const asked: OptionTerm = `dataPath '${request.dataPath}'`;
  refuseTarget(asked, mode, target.capabilities, target.servedBy);
  if (request.batch && !hasFlag(kernel, UBLK_F.BATCH_IO)) {
    throw missingOptionFeature('batch', UBLK_F.BATCH_IO);
  }
  if (MODE_FLAG[mode] !== 0 && !hasFlag(kernel, MODE_FLAG[mode])) {
    // 'zero-copy' without either flag: the older of the two is what it needs at least.
    throw missingOptionFeature(asked, MODE_FLAG[mode]);
  }
  return dataPathOf(mode, request.batch);
}
