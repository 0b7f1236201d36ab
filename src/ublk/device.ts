import { constants as fsConstants, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import { UserError } from '../errors.js';
import { processExists, processRunning } from '../processes.js';
import { close, constants as sysConstants, isErrnoError, majorMinor, open } from '../sys.js';
import { loadTarget, resolveTargetSource } from './target-loader.js';
import { SECTOR, type Capabilities, type TargetArgs, type TargetSetup } from './target.js';
import { AUTO_DEV_ID, deviceStateName, UBLK_F, UBLK_S_DEV } from './abi.js';
import { Control, isControlError, type DevInfo } from './control.js';
import { describeFeature, flagsOf, hasFlag, kernelFeatures, missingFeature } from './features.js';
import { resizeDevice } from './manage.js';
import { setIoScheduler } from './io-scheduler.js';
import { paramsFor } from './params.js';
import type { QueueWorkerData, QueueWorkerMessage } from './queue-worker.js';

export interface DeviceOptions {
  /** A built-in target name (null, loop, mem) or the path of a target module. */
  target: string;
  /** The target's arguments, as `ublk add` would pass its options. */
  args?: TargetArgs;
  /** Device id; the kernel picks one when omitted. */
  id?: number;
  queues?: number;
  depth?: number;
  maxIoBufBytes?: number;
  /** Extra UBLK_F flags to ask for (recovery...); only what the kernel grants is used. */
  flags?: number;
  /** The block layer's I/O scheduler for the device (sysfs name); default 'none'. */
  ioScheduler?: string;
  /** Log every request a handler fails, not only the first of each cause. */
  logEveryFailure?: boolean;
}

export interface RecoverOptions {
  /** The target the device was made with: a built-in name or the path of a target module. */
  target: string;
  /** The target's arguments, as the device was added with. */
  args?: TargetArgs;
  /** Accept a target that cannot keep the data of the dead daemon (mem) starting empty. */
  startEmpty?: boolean;
  /**
   * How long to wait for the old daemon to be gone and the kernel to have quiesced the device
   * (START_USER_RECOVERY answers EBUSY until then). Default 30 s.
   */
  waitMs?: number;
  /** As in DeviceOptions. */
  logEveryFailure?: boolean;
}

export interface QueueInfo {
  tid: number;
  affinity: number[];
}

const WORKER_URL = new URL('./queue-worker.js', import.meta.url);

/** Opens /dev/ublk-control with the fix for each way it can fail. */
export function openControl(): Control {
  try {
    return Control.open();
  } catch (err) {
    if (isErrnoError(err, 'ENOENT')) {
      throw new UserError(
        "no /dev/ublk-control: load the ublk driver with 'modprobe ublk_drv' (Linux 6.0+ built with CONFIG_BLK_DEV_UBLK)",
      );
    }
    if (isErrnoError(err, 'EACCES') || isErrnoError(err, 'EPERM')) {
      throw new UserError('permission denied on /dev/ublk-control: run as root (sudo)');
    }
    throw err;
  }
}

/** A control error the user can act on, in words; anything else unchanged. */
export function explainControlError(err: unknown, devId: number): unknown {
  if (isControlError(err, 'EEXIST')) {
    return new UserError(`device id ${devId} is already in use: pick another -n, or omit it`);
  }
  if (isControlError(err, 'ENODEV')) return new UserError(`there is no ublk device ${devId}`);
  if (isControlError(err, 'EPERM') || isControlError(err, 'EACCES')) {
    const who =
      process.getuid?.() === 0
        ? 'run as root (sudo)'
        : "it is not yours: run as root, or as the device's owner";
    return new UserError(`${(err as Error).message}: ${who}`);
  }
  return err;
}

/**
 * A running ublk device served by this process: one worker thread per hardware queue, the target's
 * handlers in each. Made by {@link createDevice} or taken over from a dead daemon by
 * {@link recoverDevice}; gone after {@link Device.stop}, or when someone else stops it
 * (`ublk del`), which `closed` reports.
 */
export class Device {
  /**
   * Resolves once this process no longer serves the device, everything of it released: with
   * 'deleted' once it is deleted, whoever stopped it, or 'handed-over' when `ublk quiesce`
   * (QUIESCE_DEV) took it from this process, alive, for a new daemon to recover. Rejects when a
   * queue thread fails (an uncaught error in a handler, say): the device is then left to the
   * kernel, which notices that its server died (recovery, or DEAD), and the process should exit.
   */
  readonly closed: Promise<'deleted' | 'handed-over'>;
  private stopping: Promise<void> | undefined;

  readonly target: { name: string; size: number; info: Record<string, unknown> };
  private readonly queuesStopped: Promise<void>;

  /** A started (or recovered) device, served by `workers`. */
  private constructor(
    readonly info: DevInfo,
    readonly queues: QueueInfo[],
    targetName: string,
    private readonly control: Control,
    private readonly charFd: number,
    private readonly setup: TargetSetup,
    workers: Worker[],
  ) {
    this.target = { name: targetName, size: setup.size, info: setup.info ?? {} };
    this.queuesStopped = allExited(workers);
    // A stop or a quiesce from outside (`ublk del`, `ublk quiesce`) shows up as every queue
    // ending on its own.
    this.closed = this.queuesStopped.then(() => this.afterQueuesEnded());
  }

  /**
   * STOP_DEV leaves the device DEAD before it aborts the tags; QUIESCE_DEV aborts the tags of a
   * device that stays LIVE (QUIESCED once this process lets go of /dev/ublkcN). A quiesced device
   * is released, not deleted: its requests wait for the daemon that recovers it.
   */
  private async afterQueuesEnded(): Promise<'deleted' | 'handed-over'> {
    if (!this.stopping) {
      const state = await this.control
        .getDevInfo(this.id)
        .then((now) => now.state)
        .catch(() => UBLK_S_DEV.DEAD);
      if (state !== UBLK_S_DEV.DEAD && (this.info.flags & UBLK_F.USER_RECOVERY) !== 0) {
        this.stopping = handOver(this.charFd, this.control, this.setup);
        await this.stopping;
        return 'handed-over';
      }
    }
    await this.stop();
    return 'deleted';
  }

  /**
   * UPDATE_SIZE (UBLK_F_UPDATE_SIZE, Linux 6.16+): the device's capacity becomes `bytes`. The
   * target must be able to serve the new size (a loop target's file grown first, say).
   */
  async resize(bytes: number): Promise<void> {
    await resizeDevice(this.control, this.id, bytes);
  }

  get id(): number {
    return this.info.devId;
  }

  /** The block device users see. */
  get path(): string {
    return `/dev/ublkb${this.info.devId}`;
  }

  /** STOP_DEV, serve until every tag is aborted, release everything, DEL_DEV. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      try {
        await this.control.stopDev(this.id);
      } catch (err) {
        if (!isControlError(err, 'ENODEV')) throw err;
      }
      await this.queuesStopped;
      await release(this.charFd, this.control, this.id, this.setup);
    })();
    return this.stopping;
  }

  /** @internal */
  static async create(options: DeviceOptions): Promise<Device> {
    const source = resolveTargetSource(options.target);
    const target = await loadTarget(source);
    const setup = await target.setup(options.args ?? {}, { recovering: false, startEmpty: false });
    const caps: Capabilities = setup.capabilities ?? {};
    let control: Control | undefined;
    let info: DevInfo | undefined;
    let charFd = -1;
    const workers: Worker[] = [];
    try {
      control = openControl();
      // Validate what the target declared before anything exists in the kernel.
      paramsFor(setup.size, caps, options.maxIoBufBytes ?? 524288, sysConstants.PAGE_SIZE);
      const devId = options.id ?? AUTO_DEV_ID;
      const { flags, required } = await addDevFlags(control, options.flags ?? 0);
      info = await control
        .addDev({
          devId,
          nrHwQueues: options.queues ?? 1,
          queueDepth: options.depth ?? 128,
          maxIoBufBytes: options.maxIoBufBytes ?? 524288,
          flags,
        })
        .catch((err: unknown) => {
          if (hasFlag(flags, UBLK_F.UNPRIVILEGED_DEV) && isControlError(err, 'EPERM')) {
            // Before 6.3 every control command needs CAP_SYS_ADMIN.
            throw missingFeature(
              'an unprivileged device (--unprivileged)',
              UBLK_F.UNPRIVILEGED_DEV,
            );
          }
          throw explainControlError(err, devId);
        });
      refuseMissingFlags(required, info.flags);
      const params = paramsFor(setup.size, caps, info.maxIoBufBytes, sysConstants.PAGE_SIZE);
      charFd = await openCharDevice(info.devId);
      await control.setParams(info.devId, params);
      const queues = await startQueues(control, info, charFd, source, setup, workers, options);
      await control.startDev(info.devId, process.pid);
      setIoScheduler(info.devId, options.ioScheduler);
      info = await control.getDevInfo(info.devId);
      return new Device(info, queues, target.name, control, charFd, setup, workers);
    } catch (err) {
      await abandon(control, info, charFd, workers, setup);
      throw err;
    }
  }

  /**
   * @internal
   * The kernel's user recovery (6.1+): a device added with UBLK_F_USER_RECOVERY whose daemon died
   * is QUIESCED, its IO held; a new daemon runs START_USER_RECOVERY, opens /dev/ublkcN, fetches
   * every tag of every queue, and END_USER_RECOVERY makes the device LIVE again, served by it. The
   * parameters stay those of the first start (SET_PARAMS is refused once a device was started), so
   * the target must come back with the same size.
   */
  static async recover(devId: number, options: RecoverOptions): Promise<Device> {
    const source = resolveTargetSource(options.target);
    const target = await loadTarget(source);
    const control = openControl();
    let setup: TargetSetup | undefined;
    let started = false;
    let charFd = -1;
    const workers: Worker[] = [];
    try {
      // Everything that can be refused is checked before START_USER_RECOVERY, after which a
      // failure leaves the device waiting for a daemon (QUIESCED) until `ublk del`.
      let info = await control.getDevInfo(devId).catch((err: unknown) => {
        throw explainControlError(err, devId);
      });
      refuseUnrecoverable(info);
      setup = await target.setup(options.args ?? {}, {
        recovering: true,
        startEmpty: options.startEmpty ?? false,
      });
      refuseOwnDevice(devId);
      const params = await control.getParams(devId);
      const deviceBytes = (params.basic?.devSectors ?? 0) * SECTOR;
      if (deviceBytes !== setup.size) {
        throw new UserError(
          `cannot recover device ${devId}: the target now has ${setup.size} bytes, the device ${deviceBytes}`,
        );
      }
      await startUserRecovery(control, info, options.waitMs ?? 30_000);
      started = true;
      charFd = await openCharDevice(devId);
      const queues = await startQueues(control, info, charFd, source, setup, workers, options);
      await control.endUserRecovery(devId, process.pid);
      info = await control.getDevInfo(devId);
      return new Device(info, queues, target.name, control, charFd, setup, workers);
    } catch (err) {
      // Never STOP_DEV or DEL_DEV here: the device and its data stay for another try or `del`.
      await Promise.all(workers.map((w) => w.terminate()));
      if (charFd >= 0) close(charFd);
      control.close();
      await setup?.close?.();
      if (started && !(err instanceof UserError)) {
        throw new Error(
          `recovery of ublk device ${devId} failed after START_USER_RECOVERY (${(err as Error).message}); it waits QUIESCED for a new daemon: remove it with 'ublk del -n ${devId}'`,
          { cause: err },
        );
      }
      throw err;
    }
  }
}

/** Creates and starts a ublk device served by this process. */
export function createDevice(options: DeviceOptions): Promise<Device> {
  return Device.create(options);
}

/**
 * Serves a device whose daemon died, added with recovery (`-r 1`); resolves once it is LIVE again,
 * served by this process. See {@link Device.recover}.
 */
export function recoverDevice(devId: number, options: RecoverOptions): Promise<Device> {
  return Device.recover(devId, options);
}

/** ADD_DEV silently drops the flags a kernel does not know: refuse to run without them. */
function refuseMissingFlags(asked: number, granted: number): void {
  const missing = asked - (asked & granted);
  if (missing === 0) return;
  const names = flagsOf(missing).map(describeFeature);
  throw new UserError(`this kernel's ublk driver does not support ${names.join(', ')}`);
}

const RECOVERY_FLAGS =
  UBLK_F.USER_RECOVERY | UBLK_F.USER_RECOVERY_REISSUE | UBLK_F.USER_RECOVERY_FAIL_IO;

/**
 * The flags to send with ADD_DEV, and those the kernel must grant, refusing what cannot work
 * before anything exists in the kernel.
 *
 * - A recoverable device also asks for QUIESCE where the kernel has it (as kublk does), so that
 *   `ublk quiesce` can hand it to a new daemon. QUIESCE (6.16) postdates GET_FEATURES (6.5): a
 *   kernel without GET_FEATURES has no QUIESCE.
 * - UNPRIVILEGED_DEV: the kernel drops it for a caller with CAP_SYS_ADMIN (the device is then an
 *   ordinary one), so for root whether the kernel has it is asked of GET_FEATURES; for anyone
 *   else ADD_DEV itself answers (EPERM before 6.3). The kernel also silently drops recovery from
 *   an unprivileged device, which is refused here in words.
 */
async function addDevFlags(
  control: Control,
  asked: number,
): Promise<{ flags: number; required: number }> {
  let flags = asked;
  let required = asked;
  if (hasFlag(asked, UBLK_F.USER_RECOVERY)) {
    const features = await control.getFeatures();
    if (features !== undefined && hasFlag(features, UBLK_F.QUIESCE)) flags += UBLK_F.QUIESCE;
  }
  if (hasFlag(asked, UBLK_F.UNPRIVILEGED_DEV)) {
    if (process.getuid?.() === 0) {
      if (!hasFlag(await kernelFeatures(control), UBLK_F.UNPRIVILEGED_DEV)) {
        throw missingFeature('an unprivileged device (--unprivileged)', UBLK_F.UNPRIVILEGED_DEV);
      }
      required -= UBLK_F.UNPRIVILEGED_DEV;
    } else if ((asked & RECOVERY_FLAGS) !== 0) {
      throw new UserError(
        'an unprivileged device cannot be recovered (the kernel allows recovery to root only): drop -r, -i and -e',
      );
    }
  }
  return { flags, required };
}

/** Whether a device can be taken over at all, said before anything is changed. */
function refuseUnrecoverable(info: DevInfo): void {
  const devId = info.devId;
  if ((info.flags & UBLK_F.USER_RECOVERY) === 0) {
    throw new UserError(
      `device ${devId} was added without recovery (-r 1), so it cannot be recovered: remove it with 'ublk del -n ${devId}'`,
    );
  }
  if (info.state === UBLK_S_DEV.DEAD) {
    throw new UserError(
      `device ${devId} is DEAD (stopped), so it cannot be recovered: remove it with 'ublk del -n ${devId}'`,
    );
  }
  if (info.state === UBLK_S_DEV.LIVE && processRunning(info.ublksrvPid)) {
    throw new UserError(
      `device ${devId} is LIVE and its daemon (pid ${info.ublksrvPid}) is running: nothing to recover`,
    );
  }
  const recoverable: number[] = [UBLK_S_DEV.LIVE, UBLK_S_DEV.QUIESCED, UBLK_S_DEV.FAIL_IO];
  if (!recoverable.includes(info.state)) {
    throw new UserError(`device ${devId} is ${deviceStateName(info.state)}: cannot recover it`);
  }
}

/**
 * A daemon that does IO to its own block device waits for itself: here, for a device that holds
 * all IO until this very daemon serves it. Refuses when this process holds the block device, or a
 * file on a file system that lives on it (a loop target's backing file, say).
 */
function refuseOwnDevice(devId: number): void {
  const disk = `ublkb${devId}`;
  const own = new Set<string>(); // "major:minor" of the disk and its partitions
  try {
    own.add(readFileSync(`/sys/block/${disk}/dev`, 'utf8').trim());
    for (const name of readdirSync(`/sys/block/${disk}`)) {
      if (name.startsWith(disk))
        own.add(readFileSync(`/sys/block/${disk}/${name}/dev`, 'utf8').trim());
    }
  } catch {
    if (own.size === 0) return; // no block device (yet): nothing of it can be held
  }
  for (const fd of readdirSync('/proc/self/fd')) {
    let st;
    try {
      // Follows the fd's link to the open file itself: no path lookup, no IO.
      st = statSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // the fd of the directory listing itself, already closed
    }
    if ((st.isBlockDevice() && own.has(majorMinor(st.rdev))) || own.has(majorMinor(st.dev))) {
      throw new UserError(
        `the target uses /dev/${disk}, the device it would serve (fd ${fd}): a daemon must never do IO to its own device`,
      );
    }
  }
}

/**
 * START_USER_RECOVERY once the old daemon is gone: the kernel answers EBUSY while the device is
 * LIVE (its monitor notices a dead daemon within 5 s on 6.1) and while the dead daemon's io_uring
 * still holds /dev/ublkcN.
 */
async function startUserRecovery(control: Control, info: DevInfo, waitMs: number): Promise<void> {
  const devId = info.devId;
  const deadline = Date.now() + waitMs;
  const oldPid = info.ublksrvPid;
  while (processExists(oldPid) && Date.now() < deadline) await sleep(100);
  for (;;) {
    try {
      await control.startUserRecovery(devId);
      return;
    } catch (err) {
      if (isControlError(err, 'EBUSY') && Date.now() < deadline) {
        await sleep(200);
        continue;
      }
      if (isControlError(err, 'EBUSY')) {
        const now = await control.getDevInfo(devId).catch(() => info);
        const still = processExists(oldPid) ? `; its old daemon (pid ${oldPid}) still exists` : '';
        throw new UserError(
          `device ${devId} is still ${deviceStateName(now.state)} after ${waitMs / 1000} s${still}: cannot recover it yet`,
        );
      }
      if (isControlError(err, 'EINVAL')) {
        // 6.1: no queue was ever ready (an earlier recovery that died before fetching).
        throw new UserError(
          `the kernel refused to recover device ${devId} (${err.message}): remove it with 'ublk del -n ${devId}'`,
        );
      }
      throw explainControlError(err, devId);
    }
  }
}

/**
 * The kernel creates /dev/ublkcN during ADD_DEV, but udev may still hold it for a moment, and for
 * an unprivileged device it is root's until udev's rule gives it to its owner (`ublk chown`):
 * wait for that, as ublksrv does.
 */
async function openCharDevice(devId: number): Promise<number> {
  const path = `/dev/ublkc${devId}`;
  const retryable = ['ENOENT', 'EBUSY', 'EACCES', 'EPERM'];
  for (let attempt = 0; ; attempt++) {
    try {
      return open(path, fsConstants.O_RDWR | sysConstants.O_CLOEXEC, 0);
    } catch (err) {
      const retry = retryable.some((code) => isErrnoError(err, code));
      if (retry && attempt < 400) {
        await sleep(50);
        continue;
      }
      if (isErrnoError(err, 'EACCES') || isErrnoError(err, 'EPERM')) {
        throw new UserError(
          `permission denied on ${path}: an unprivileged device's nodes are given to their owner by udev (install udev/99-ublk-dev.rules, see the README)`,
        );
      }
      throw err;
    }
  }
}

/**
 * One worker per hardware queue, pushed to `workers` as they are made so that a failure leaves the
 * caller able to stop them; resolves once every queue has fetched all its tags. Used alike to
 * start a new device (before START_DEV) and to take one over (before END_USER_RECOVERY).
 */
async function startQueues(
  control: Control,
  info: DevInfo,
  charFd: number,
  targetSource: string,
  setup: TargetSetup,
  workers: Worker[],
  { logEveryFailure }: { logEveryFailure?: boolean },
): Promise<QueueInfo[]> {
  const ready: Promise<QueueInfo>[] = [];
  for (let queueId = 0; queueId < info.nrHwQueues; queueId++) {
    const affinity = await control.getQueueAffinity(info.devId, queueId);
    const data: QueueWorkerData = {
      devId: info.devId,
      queueId,
      depth: info.queueDepth,
      bufferBytes: info.maxIoBufBytes,
      charFd,
      encodedOpcodes: (info.flags & UBLK_F.CMD_IOCTL_ENCODE) !== 0,
      targetSource,
      shared: setup.shared,
      capabilities: setup.capabilities ?? {},
      logEveryFailure,
      affinity,
    };
    const worker = new Worker(WORKER_URL, { workerData: data });
    exitOf.set(worker, watchExit(worker, queueId));
    workers.push(worker);
    ready.push(
      new Promise((resolve, reject) => {
        worker.on('message', (msg: QueueWorkerMessage) => {
          if (msg.type === 'ready') resolve({ tid: msg.tid, affinity });
        });
        worker.once('error', reject);
        worker.once('exit', (code) => reject(new Error(`queue ${queueId} exited with ${code}`)));
      }),
    );
  }
  return Promise.all(ready);
}

/**
 * Settles when the worker is gone: resolves on a clean exit (its queue stopped), rejects on an
 * uncaught error or a non-zero exit. Made at spawn, so an early exit is never waited for forever.
 */
function watchExit(worker: Worker, queueId: number): Promise<void> {
  let failure: Error | undefined;
  worker.once('error', (err) => {
    failure = new Error(`queue ${queueId} thread failed: ${err.stack ?? err.message}`, {
      cause: err,
    });
  });
  const exited = new Promise<void>((resolve, reject) =>
    worker.once('exit', (code) => {
      if (failure) reject(failure);
      else if (code !== 0) reject(new Error(`queue ${queueId} thread exited with code ${code}`));
      else resolve();
    }),
  );
  exited.catch(() => undefined); // observed later, by whoever waits for the queues
  return exited;
}

const exitOf = new WeakMap<Worker, Promise<void>>();

/** Every queue ended: resolves when all exited cleanly, rejects as soon as one failed. */
function allExited(workers: Worker[]): Promise<void> {
  const all = Promise.all(workers.map((w) => exitOf.get(w))).then(() => undefined);
  all.catch(() => undefined);
  return all;
}

async function release(
  charFd: number,
  control: Control,
  devId: number,
  setup: TargetSetup,
): Promise<void> {
  if (charFd >= 0) close(charFd);
  try {
    // Waits until nothing references /dev/ublkcN; every queue thread has unmapped by now.
    await control.delDev(devId);
  } catch (err) {
    if (!isControlError(err, 'ENODEV')) throw err;
  } finally {
    control.close();
    await setup.close?.();
  }
}

/** Lets go of a quiesced device without deleting it: the next daemon recovers it. */
async function handOver(charFd: number, control: Control, setup: TargetSetup): Promise<void> {
  if (charFd >= 0) close(charFd);
  control.close();
  await setup.close?.();
}

/** Undoes a half-made device, so a failed create leaves nothing behind in the kernel. */
async function abandon(
  control: Control | undefined,
  info: DevInfo | undefined,
  charFd: number,
  workers: Worker[],
  setup: TargetSetup,
): Promise<void> {
  if (!control) {
    await setup.close?.();
    return;
  }
  if (!info) {
    control.close();
    await setup.close?.();
    return;
  }
  if (workers.length > 0) {
    // STOP_DEV aborts every fetched tag, started or not; the queue threads then release their
    // rings and mappings, which DEL_DEV waits for.
    await control.stopDev(info.devId).catch(() => undefined);
    await Promise.race([Promise.allSettled(workers.map((w) => exitOf.get(w))), sleep(10_000)]);
    await Promise.all(workers.map((w) => w.terminate()));
  }
  await release(charFd, control, info.devId, setup).catch(() => undefined);
}

/** "major:minor" of a device node, "0:0" when it does not exist. */
export function deviceNumbers(path: string): string {
  return existsSync(path) ? majorMinor(statSync(path).rdev) : '0:0';
}
