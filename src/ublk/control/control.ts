import { constants as fsConstants } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { errnoName, type ErrnoError } from '../../errors.js';
import {
  close as closeSys,
  constants as sysConstants,
  isErrnoError,
  open as openFd,
} from '../../sys.js';
import { IoBuffer, IORING_SETUP_SQE128, Ring } from '../../uring/index.js';
import {
  AUTO_DEV_ID,
  CTRL_CMD,
  DEV_INFO,
  NO_QUEUE_ID,
  UBLK_CMD,
  UBLK_F,
  UBLK_FEATURES_LEN,
  UBLK_U_CMD,
  decodeParams,
  decodeStruct,
  encodeParams,
  encodeStruct,
  type StructValue,
  type UblkParams,
  type UblkParamsInput,
} from '../ublk-cmd.js';

export const CONTROL_PATH = '/dev/ublk-control';

export type DevInfo = StructValue<typeof DEV_INFO>;
type CommandName = keyof typeof UBLK_U_CMD;

const EOPNOTSUPP = osConstants.errno.EOPNOTSUPP;
const EINVAL = osConstants.errno.EINVAL;

/**
 * Recognised by a brand rather than by class identity, as UserError is: a caller holding another
 * copy of this package (another node_modules) still recognises the ControlErrors of this one.
 */
const CONTROL_ERROR_BRAND = Symbol.for('ublk-ts.ControlError');

/**
 * A ublk control command the kernel refused: an ErrnoError whose `errno` is positive and whose
 * `code` is its name ('EEXIST', 'ENODEV', 'EPERM'...), the stable thing to match on; `syscall` is
 * the command ('ublk ADD_DEV'), `devId` the device it was for.
 */
export class ControlError extends Error implements ErrnoError {
  override name = 'ControlError';
  readonly code: string;
  readonly syscall: string;
  readonly [CONTROL_ERROR_BRAND] = true;
  constructor(
    readonly command: CommandName,
    readonly devId: number,
    readonly errno: number,
  ) {
    const code = errnoName(errno);
    super(`${command} of ublk device ${devId === AUTO_DEV_ID ? '(new)' : devId} failed: ${code}`);
    this.code = code;
    this.syscall = `ublk ${command}`;
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return isControlError(value);
  }
}

/** A ControlError (of any copy of this package), optionally with a given code ('ENODEV'). */
export function isControlError(err: unknown, code?: string): err is ControlError {
  return (
    typeof err === 'object' &&
    err !== null &&
    (err as { [CONTROL_ERROR_BRAND]?: unknown })[CONTROL_ERROR_BRAND] === true &&
    (code === undefined || (err as { code?: unknown }).code === code)
  );
}

interface CommandArgs {
  devId: number;
  queueId?: number;
  data0?: number;
  /** Bytes the kernel reads (the prefix of the command buffer) and the length it may use. */
  input?: Uint8Array;
  len?: number;
  /** Prefix the buffer with /dev/ublkcN (see submit). */
  withPath?: boolean;
}

/**
 * Opcode style, learnt once per process. Kernels up to 6.3 take only the legacy numbers, some newer
 * ones only the ioctl-encoded form. Probing with an arbitrary command is unreliable (6.1 looks the
 * device up before it looks at the opcode, so an encoded ADD_DEV gets -ENODEV, not -EOPNOTSUPP),
 * so the probe is GET_FEATURES, which exists only encoded and needs no device: if it works, the
 * kernel takes encoded opcodes. A legacy command refused as unsupported switches back.
 */
let useEncoded: boolean | undefined;

/**
 * Whether the kernel has GET_DEV_INFO2 (6.3+), learnt by trying it: older kernels answer
 * EOPNOTSUPP and get GET_DEV_INFO.
 */
let hasDevInfo2: boolean | undefined;

/** The char device whose permissions the kernel checks for an unprivileged device's commands. */
export function charDevicePath(devId: number): string {
  return `/dev/ublkc${devId}`;
}

/**
 * The ublk control device: every control command of the protocol, each an io_uring URING_CMD on a
 * 128-byte-SQE ring. The kernel runs these commands from its io worker threads, so awaiting one
 * (START_DEV, DEL_DEV can take a while) never blocks this thread's event loop.
 */
export class Control {
  private readonly pending = new Map<number, (res: number) => void>();
  private nextUserData = 1;
  /** Page-aligned scratch memory the kernel reads and writes command payloads from. */
  private readonly buffer = IoBuffer.allocate(4096);

  private constructor(
    private readonly fd: number,
    private readonly ring: Ring,
  ) {
    ring.startEventLoop((userData, res) => {
      const resolve = this.pending.get(userData);
      this.pending.delete(userData);
      resolve?.(res);
    });
  }

  /** Opens /dev/ublk-control; throws the open(2) error (ENOENT: no ublk_drv, EACCES...). */
  static open(): Control {
    const fd = openFd(CONTROL_PATH, fsConstants.O_RDWR | sysConstants.O_CLOEXEC, 0);
    let ring: Ring;
    try {
      ring = Ring.create({ entries: 16, flags: IORING_SETUP_SQE128 });
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
    return new Control(fd, ring);
  }

  close(): void {
    this.ring.close();
    this.buffer.free();
    closeQuietly(this.fd);
  }

  /** ADD_DEV: the kernel writes back the id, granted flags, clamped queues, rounded buffer size. */
  async addDev(info: Partial<DevInfo>): Promise<DevInfo> {
    const devId = info.devId ?? AUTO_DEV_ID;
    const bytes = new Uint8Array(DEV_INFO.size);
    encodeStruct(DEV_INFO, { ...info, devId }, bytes);
    const reply = await this.run('ADD_DEV', { devId, input: bytes, len: DEV_INFO.size });
    return this.learn(decodeStruct(DEV_INFO, reply));
  }

  /**
   * GET_DEV_INFO2 where the kernel has it (6.3+), which also serves unprivileged devices (the
   * kernel checks the caller's access to /dev/ublkcN, whose path prefixes the buffer);
   * GET_DEV_INFO otherwise.
   */
  async getDevInfo(devId: number): Promise<DevInfo> {
    let refused: unknown;
    if (hasDevInfo2 !== false) {
      try {
        const reply = await this.run('GET_DEV_INFO2', {
          devId,
          len: DEV_INFO.size,
          withPath: true,
        });
        hasDevInfo2 = true;
        return this.learn(decodeStruct(DEV_INFO, reply));
      } catch (err) {
        if (isControlError(err, 'EOPNOTSUPP')) hasDevInfo2 = false;
        else if (isControlError(err, 'ENODEV')) throw err;
        // Else the path check failed (no node, or not the caller's): GET_DEV_INFO still answers
        // root about a privileged device; anything else keeps the first refusal.
        else refused = err;
      }
    }
    try {
      const reply = await this.run('GET_DEV_INFO', { devId, len: DEV_INFO.size });
      return this.learn(decodeStruct(DEV_INFO, reply));
    } catch (err) {
      throw refused ?? err;
    }
  }

  /** Every later command about an unprivileged device carries its /dev/ublkcN path. */
  private learn(info: DevInfo): DevInfo {
    if (info.flags & UBLK_F.UNPRIVILEGED_DEV) this.unprivileged.add(info.devId);
    return info;
  }

  /** `pid` is the serving process (6.17+ checks it is the tgid that opened /dev/ublkcN). */
  async startDev(devId: number, pid: number): Promise<void> {
    await this.run('START_DEV', { devId, data0: pid });
  }

  async stopDev(devId: number): Promise<void> {
    await this.run('STOP_DEV', { devId });
  }

  /**
   * TRY_STOP_DEV (7.0+, devices granted UBLK_F.SAFE_STOP_DEV): STOP_DEV unless the block device
   * is open, which fails with EBUSY and leaves the device as it was.
   */
  async tryStopDev(devId: number): Promise<void> {
    await this.run('TRY_STOP_DEV', { devId });
  }

  /** UPDATE_SIZE (6.16+): the started device's capacity becomes `sectors` (512 bytes each). */
  async updateSize(devId: number, sectors: number): Promise<void> {
    await this.run('UPDATE_SIZE', { devId, data0: sectors });
  }

  /**
   * QUIESCE_DEV (6.16+, devices granted UBLK_F_QUIESCE): holds new IO, waits up to `timeoutMs`
   * (0: forever) until each queue has an idle tag, then aborts the daemon's idle tags, so that it
   * can let go and a new daemon recover the device. EBUSY when the wait timed out.
   */
  async quiesceDev(devId: number, timeoutMs: number): Promise<void> {
    await this.run('QUIESCE_DEV', { devId, data0: timeoutMs });
  }

  /** Waits until nothing references /dev/ublkcN any more (fds, mappings, rings). */
  async delDev(devId: number): Promise<void> {
    await this.run('DEL_DEV', { devId });
  }

  /**
   * DEL_DEV_ASYNC (6.9+): deletes without waiting for the last reference to go. Returns false when
   * the kernel does not have it (the command exists only ioctl-encoded).
   */
  async delDevAsync(devId: number): Promise<boolean> {
    const res = await this.submit(UBLK_U_CMD.DEL_DEV_ASYNC, this.withPathFor({ devId }));
    if (res === -EOPNOTSUPP || res === -EINVAL) return false;
    if (res < 0) throw new ControlError('DEL_DEV_ASYNC', devId, -res);
    this.unprivileged.delete(devId);
    return true;
  }

  async setParams(devId: number, params: UblkParamsInput): Promise<void> {
    const bytes = encodeParams(params);
    await this.run('SET_PARAMS', { devId, input: bytes, len: bytes.length });
  }

  async getParams(devId: number): Promise<UblkParams> {
    const request = encodeParams({});
    const reply = await this.run('GET_PARAMS', { devId, input: request, len: request.length });
    return decodeParams(reply.subarray(0, request.length));
  }

  /** The CPUs the kernel maps to a hardware queue. */
  async getQueueAffinity(devId: number, queueId: number): Promise<number[]> {
    const len = 128; // a cpu_set_t: 1024 CPUs
    const mask = await this.run('GET_QUEUE_AFFINITY', {
      devId,
      queueId: NO_QUEUE_ID,
      data0: queueId,
      len,
    });
    const cpus: number[] = [];
    for (let cpu = 0; cpu < len * 8; cpu++) {
      if (mask[cpu >> 3] & (1 << (cpu & 7))) cpus.push(cpu);
    }
    return cpus;
  }

  async startUserRecovery(devId: number): Promise<void> {
    await this.run('START_USER_RECOVERY', { devId });
  }

  async endUserRecovery(devId: number, pid: number): Promise<void> {
    await this.run('END_USER_RECOVERY', { devId, data0: pid });
  }

  /** The UBLK_F mask the driver supports, or undefined before 6.5 (no GET_FEATURES). */
  async getFeatures(): Promise<number | undefined> {
    const res = await this.submit(UBLK_U_CMD.GET_FEATURES, {
      devId: AUTO_DEV_ID,
      len: UBLK_FEATURES_LEN,
    });
    if (res < 0) return undefined;
    const view = new DataView(this.buffer.bytes.buffer, 0, 8);
    return view.getUint32(0, true) + view.getUint32(4, true) * 2 ** 32;
  }

  /** Devices known to be unprivileged: their commands carry the /dev/ublkcN path. */
  private readonly unprivileged = new Set<number>();

  private withPathFor(args: CommandArgs): CommandArgs {
    return this.unprivileged.has(args.devId) ? { ...args, withPath: true } : args;
  }

  /** Runs a command; resolves with the kernel's reply: the payload after any path prefix. */
  private async run(command: CommandName, plain: CommandArgs): Promise<Uint8Array> {
    if (useEncoded === undefined) useEncoded = (await this.getFeatures()) !== undefined;
    const args = this.withPathFor(plain);
    const legacy = (UBLK_CMD as Record<string, number | undefined>)[command];
    const encodedOp = UBLK_U_CMD[command];
    let res: number;
    if (useEncoded || legacy === undefined) {
      res = await this.submit(encodedOp, args);
    } else {
      res = await this.submit(legacy, args);
      if (res === -EOPNOTSUPP || res === -EINVAL) {
        // A kernel built without legacy opcodes that also predates GET_FEATURES.
        const encoded = await this.submit(encodedOp, args);
        if (encoded !== -EOPNOTSUPP && encoded !== -EINVAL) {
          useEncoded = true;
          res = encoded;
        }
      }
    }
    if (res < 0) throw new ControlError(command, args.devId, -res);
    if (command === 'DEL_DEV') this.unprivileged.delete(args.devId);
    return this.buffer.bytes.subarray(args.withPath ? pathBytes(args.devId).length : 0);
  }

  private submit(cmdOp: number, args: CommandArgs): Promise<number> {
    // One command at a time: they share the payload buffer, and none is on a hot path.
    return this.serial(() => {
      // An unprivileged device's commands (and GET_DEV_INFO2) start the buffer with the path of
      // /dev/ublkcN, counted in len and in dev_path_len; the kernel skips it before the payload.
      const path = args.withPath ? pathBytes(args.devId) : new Uint8Array(0);
      const len = path.length + (args.len ?? 0);
      // Zeroed first: some replies are shorter than the buffer they are given.
      this.buffer.bytes.fill(0, 0, Math.max(len, path.length + (args.input?.length ?? 0)));
      this.buffer.bytes.set(path);
      if (args.input) this.buffer.bytes.set(args.input, path.length);
      const userData = this.nextUserData++;
      const cmd = this.ring.sq.prepUringCmd(this.fd, cmdOp, userData);
      if (!cmd) throw new Error('control ring full');
      encodeStruct(
        CTRL_CMD,
        {
          devId: args.devId,
          queueId: args.queueId ?? NO_QUEUE_ID,
          len,
          addr: len > 0 ? this.buffer.address : 0,
          data0: args.data0 ?? 0,
          devPathLen: path.length,
        },
        new Uint8Array(cmd.buffer, cmd.byteOffset, CTRL_CMD.size),
      );
      const done = new Promise<number>((resolve) => this.pending.set(userData, resolve));
      const submitted = this.ring.submit();
      if (submitted < 0) {
        this.pending.delete(userData);
        return Promise.resolve(submitted);
      }
      return done;
    });
  }

  private queue: Promise<unknown> = Promise.resolve();
  private serial<T>(work: () => Promise<T>): Promise<T> {
    const next = this.queue.then(work, work);
    this.queue = next.catch(() => undefined);
    return next;
  }
}

function pathBytes(devId: number): Uint8Array {
  return new TextEncoder().encode(charDevicePath(devId));
}

function closeQuietly(fd: number): void {
  try {
    closeSys(fd);
  } catch (err) {
    if (!isErrnoError(err)) throw err;
  }
}
