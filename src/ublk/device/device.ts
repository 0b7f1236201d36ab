import { constants as fsConstants, readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import { UserError } from '../../errors.js';
import { ownFdOnDevice, processExists, processRunning } from '../../processes.js';
import { close, constants as sysConstants, isErrnoError, open } from '../../sys.js';
import { resolveTarget } from '../target/loader.js';
import { SECTOR, type Capabilities, type TargetSetup } from '../target/contract.js';
import { AUTO_DEV_ID, deviceStateName, UBLK_F, UBLK_S_DEV } from '../ublk-cmd.js';
import { isControlError, type Control, type DevInfo } from '../control/control.js';
import { explainControlError, openControl } from '../control/control-errors.js';
import { describeFeature, flagsOf, hasFlag, kernelFeatures } from '../control/feature-flags.js';
import { resizeDevice } from '../control/device-commands.js';
import { setIoScheduler } from './io-scheduler.js';
import { paramsFor } from '../control/params.js';
import type { QueueWorkerData, QueueWorkerMessage } from '../queue/queue-worker.js';
import {
  dataPathOfFlags,
  missingOptionFeature,
  refuseExclusions,
  resolveDataPath,
  type DataPathRequest,
  type ResolvedDataPath,
} from './data-path.js';
import {
  checkDeviceOptions,
  checkRecoverOptions,
  type AnyDeviceOptions,
  type RecoverOptions,
} from './options.js';

export type { AnyDeviceOptions, DeviceOptions, RecoverOptions, RecoveryOption } from './options.js';
export type { DataPath } from './data-path.js';

export interface QueueInfo {
  tid: number;
  affinity: number[];
}

const WORKER_URL = new URL('../queue/queue-worker.js', import.meta.url);

/** DeviceOptions' defaults for what the caller leaves out. */
const DEFAULT_QUEUES = 1;
const DEFAULT_DEPTH = 128;
const DEFAULT_MAX_IO_BUF_BYTES = 512 * 1024;

/** A queue's worker thread, and its end as watchExit reports it. */
interface QueueThread {
  worker: Worker;
  exited: Promise<void>;
}

/**
 * What serving a device holds, acquired in this order; every way out (a failed start-up, a stop, a
 * hand-over) lets go of it in reverse through {@link release}.
 */
interface Held {
  control: Control;
  setup: TargetSetup;
  charFd: number;
  threads: QueueThread[];
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
    private readonly held: Held,
  ) {
    this.target = { name: targetName, size: held.setup.size, info: held.setup.info ?? {} };
    this.queuesStopped = allExited(held.threads);
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
      const state = await this.held.control
        .getDevInfo(this.id)
        .then((now) => now.state)
        .catch(() => UBLK_S_DEV.DEAD);
      if (state !== UBLK_S_DEV.DEAD && (this.info.flags & UBLK_F.USER_RECOVERY) !== 0) {
        // Released, not deleted: the next daemon recovers it.
        this.stopping = release(this.held);
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
    await resizeDevice(this.held.control, this.id, bytes);
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
        await this.held.control.stopDev(this.id);
      } catch (err) {
        if (!isControlError(err, 'ENODEV')) throw err;
      }
      await this.queuesStopped;
      await release(this.held, this.id);
    })();
    return this.stopping;
  }

  /** @internal */
  static async create(options: AnyDeviceOptions): Promise<Device> {
    checkDeviceOptions(options);
    const request = dataPathRequest(options);
    refuseExclusions(request);
    const { source, target } = await resolveTarget(options.target);
    const setup = await target.setup(options.args ?? {}, {
      recovering: false,
      startEmpty: false,
      queues: options.queues ?? DEFAULT_QUEUES,
    });
    const caps: Capabilities = setup.capabilities ?? {};
    let control: Control | undefined;
    let info: DevInfo;
    let required: number;
    let dataPath: ResolvedDataPath;
    try {
      control = openControl();
      // Validate what the target declared before anything exists in the kernel.
      paramsFor(
        setup.size,
        caps,
        options.maxIoBufBytes ?? DEFAULT_MAX_IO_BUF_BYTES,
        sysConstants.PAGE_SIZE,
      );
      const features = await control.getFeatures();
      dataPath = resolveDataPath(
        request,
        { capabilities: caps, servedBy: servedBy(target.name, setup) },
        features,
      );
      const devId = options.id ?? AUTO_DEV_ID;
      const addFlags = await addDevFlags(control, optionFlags(options) + dataPath.flags, features);
      const flags = addFlags.flags;
      required = addFlags.required;
      info = await control
        .addDev({
          devId,
          nrHwQueues: options.queues ?? DEFAULT_QUEUES,
          queueDepth: options.depth ?? DEFAULT_DEPTH,
          maxIoBufBytes: options.maxIoBufBytes ?? DEFAULT_MAX_IO_BUF_BYTES,
          flags,
        })
        .catch((err: unknown) => {
          if (hasFlag(flags, UBLK_F.UNPRIVILEGED_DEV) && isControlError(err, 'EPERM')) {
            // Before 6.3 every control command needs CAP_SYS_ADMIN.
            throw missingOptionFeature('unprivileged', UBLK_F.UNPRIVILEGED_DEV);
          }
          throw explainControlError(err, devId);
        });
    } catch (err) {
      control?.close();
      await setup.close?.();
      throw err;
    }
    const added = info;
    const held: Held = { control, setup, charFd: -1, threads: [] };
    const started = await startServing(held, added, source, dataPath, options, {
      configure: async (ctl) => {
        refuseMissingFlags(required, added.flags);
        const params = paramsFor(setup.size, caps, added.maxIoBufBytes, sysConstants.PAGE_SIZE);
        await ctl.setParams(added.devId, params);
      },
      start: async (ctl) => {
        await ctl.startDev(added.devId, process.pid);
        setIoScheduler(added.devId, options.ioScheduler);
      },
      deleteOnFailure: true,
    });
    return new Device(started.info, started.queues, target.name, held);
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
    checkRecoverOptions(options);
    const { source, target } = await resolveTarget(options.target);
    const control = openControl();
    let setup: TargetSetup | undefined;
    let info: DevInfo;
    try {
      // Everything that can be refused is checked before START_USER_RECOVERY, after which a
      // failure leaves the device waiting for a daemon (QUIESCED) until `ublk del`.
      info = await control.getDevInfo(devId).catch((err: unknown) => {
        throw explainControlError(err, devId);
      });
      refuseUnrecoverable(info);
      setup = await target.setup(options.args ?? {}, {
        recovering: true,
        startEmpty: options.startEmpty ?? false,
        queues: info.nrHwQueues,
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
    } catch (err) {
      control.close();
      await setup?.close?.();
      throw err;
    }
    const held: Held = { control, setup, charFd: -1, threads: [] };
    // As the kernel granted it when the device was added.
    const dataPath = dataPathOfFlags(info.flags);
    const started = await startServing(held, info, source, dataPath, options, {
      start: (ctl) => ctl.endUserRecovery(devId, process.pid),
      // The device and its data stay for another try or `del`.
      deleteOnFailure: false,
    }).catch((err: unknown) => {
      if (err instanceof UserError) throw err;
      throw new Error(
        `recovery of ublk device ${devId} failed after START_USER_RECOVERY (${(err as Error).message}); it waits QUIESCED for a new daemon: remove it with 'ublk del -n ${devId}'`,
        { cause: err },
      );
    });
    return new Device(started.info, started.queues, target.name, held);
  }
}

/**
 * Creates and starts a ublk device served by this process. Any combination of options is taken
 * here (the CLI's flags may ask for any): the package index's createDevice takes DeviceOptions,
 * whose types refuse what excludes each other, and everything is refused at run time when the
 * device is made.
 */
export function createDevice(options: AnyDeviceOptions): Promise<Device> {
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

/** "target loop", or "target loop under filters stats, cow" when filters wrap it (their info). */
function servedBy(targetName: string, setup: TargetSetup): string {
  const filters = setup.info?.filters;
  return Array.isArray(filters) && filters.length > 0
    ? `target ${targetName} under filter${filters.length > 1 ? 's' : ''} ${filters.join(', ')}`
    : `target ${targetName}`;
}

/** What the data path's resolution needs of the options. */
function dataPathRequest(options: AnyDeviceOptions): DataPathRequest {
  return {
    dataPath: options.dataPath ?? 'auto',
    batch: options.batch === true,
    needGetData: options.needGetData === true,
    unprivileged: options.unprivileged === true,
    recovery: options.recovery !== undefined && options.recovery !== false,
  };
}

/** The UBLK_F flags of the options beside the data path's. */
function optionFlags(options: AnyDeviceOptions): number {
  const recovery = options.recovery;
  const reissue = typeof recovery === 'object' && recovery.reissue === true;
  const failIo = typeof recovery === 'object' && recovery.failIo === true;
  let flags = 0;
  if (options.completeInTask === true) flags += UBLK_F.URING_CMD_COMP_IN_TASK;
  if (options.needGetData === true) flags += UBLK_F.NEED_GET_DATA;
  if (recovery !== undefined && recovery !== false) flags += UBLK_F.USER_RECOVERY;
  if (reissue) flags += UBLK_F.USER_RECOVERY_REISSUE;
  if (failIo) flags += UBLK_F.USER_RECOVERY_FAIL_IO;
  if (options.unprivileged === true) flags += UBLK_F.UNPRIVILEGED_DEV;
  if (options.partitionScan === false) flags += UBLK_F.NO_AUTO_PART_SCAN;
  return flags;
}

/**
 * The flags to send with ADD_DEV, and those the kernel must grant, refusing what cannot work
 * before anything exists in the kernel.
 *
 * - A recoverable device also asks for QUIESCE where the kernel has it (as kublk does), so that
 *   `ublk quiesce` can hand it to a new daemon. QUIESCE (6.16) postdates GET_FEATURES (6.5): a
 *   kernel without GET_FEATURES has no QUIESCE.
 * - UNPRIVILEGED_DEV: the kernel drops it for a caller with CAP_SYS_ADMIN (the device is then an
 *   ordinary one), so for root whether the kernel has it is asked of GET_FEATURES; for anyone
 *   else ADD_DEV itself answers (EPERM before 6.3).
 *
 * `features` is GET_FEATURES, undefined before 6.5.
 */
async function addDevFlags(
  control: Control,
  asked: number,
  features: number | undefined,
): Promise<{ flags: number; required: number }> {
  let flags = asked;
  let required = asked;
  if (hasFlag(asked, UBLK_F.USER_RECOVERY)) {
    if (features !== undefined && hasFlag(features, UBLK_F.QUIESCE)) flags += UBLK_F.QUIESCE;
  }
  if (hasFlag(asked, UBLK_F.UNPRIVILEGED_DEV) && process.getuid?.() === 0) {
    // Before 6.5 (no GET_FEATURES), kernelFeatures probes with a throwaway device.
    if (!hasFlag(features ?? (await kernelFeatures(control)), UBLK_F.UNPRIVILEGED_DEV)) {
      throw missingOptionFeature('unprivileged', UBLK_F.UNPRIVILEGED_DEV);
    }
    required -= UBLK_F.UNPRIVILEGED_DEV;
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
  const fd = ownFdOnDevice(own);
  if (fd !== undefined) {
    throw new UserError(
      `the target uses /dev/${disk}, the device it would serve (fd ${fd}): a daemon must never do IO to its own device`,
    );
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
          `permission denied on ${path}: an unprivileged device's nodes are given to their owner by udev (install udev/99-ublk-dev.rules: see docs/cli.md, "Unprivileged devices")`,
        );
      }
      throw err;
    }
  }
}

/** How starting a new device and taking one over differ, around the start-up they share. */
interface StartSteps {
  /** Once /dev/ublkcN is open, before the queues fetch: SET_PARAMS for a new device. */
  configure?: (control: Control) => Promise<void>;
  /** Makes the device LIVE, served by this process: START_DEV or END_USER_RECOVERY. */
  start: (control: Control) => Promise<void>;
  /**
   * Whether a failure deletes the device: a new one leaves nothing in the kernel, a recovered one
   * keeps its data, QUIESCED, for another try.
   */
  deleteOnFailure: boolean;
}

/**
 * The start-up of a device that exists in the kernel, shared by create (after ADD_DEV) and recover
 * (after START_USER_RECOVERY): open /dev/ublkcN, start one queue thread per hardware queue, start
 * the device. A failure undoes what was done, in reverse, through {@link undoStart}.
 */
async function startServing(
  held: Held,
  info: DevInfo,
  targetSource: string,
  dataPath: ResolvedDataPath,
  options: { logEveryFailure?: boolean },
  steps: StartSteps,
): Promise<{ info: DevInfo; queues: QueueInfo[] }> {
  try {
    held.charFd = await openCharDevice(info.devId);
    await steps.configure?.(held.control);
    const queues = await startQueues(held, info, targetSource, dataPath, options);
    await steps.start(held.control);
    return { info: await held.control.getDevInfo(info.devId), queues };
  } catch (err) {
    await undoStart(held, info.devId, steps.deleteOnFailure);
    throw err;
  }
}

/**
 * Undoes a half-started device in reverse order. When it is to be deleted: STOP_DEV aborts every
 * fetched tag, started or not, and the queue threads, serving until each is answered, close their
 * rings and unmap, which DEL_DEV waits for. A thread that does not end in time is terminated.
 */
async function undoStart(held: Held, devId: number, deleteDevice: boolean): Promise<void> {
  const exits = held.threads.map((t) => t.exited);
  if (deleteDevice && exits.length > 0) {
    await held.control.stopDev(devId).catch(() => undefined);
    await Promise.race([Promise.allSettled(exits), sleep(10_000)]);
  }
  await Promise.all(held.threads.map((t) => t.worker.terminate()));
  await release(held, deleteDevice ? devId : undefined).catch(() => undefined);
}

/**
 * One worker per hardware queue, added to `held.threads` as they are made so that a failure leaves
 * them to be stopped; resolves once every queue has fetched all its tags.
 */
async function startQueues(
  { control, charFd, setup, threads }: Held,
  info: DevInfo,
  targetSource: string,
  dataPath: ResolvedDataPath,
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
      dataPath,
      targetSource,
      shared: setup.shared,
      capabilities: setup.capabilities ?? {},
      logEveryFailure,
      affinity,
    };
    const worker = new Worker(WORKER_URL, { workerData: data });
    threads.push({ worker, exited: watchExit(worker, queueId) });
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

/** Every queue ended: resolves when all exited cleanly, rejects as soon as one failed. */
function allExited(threads: QueueThread[]): Promise<void> {
  const all = Promise.all(threads.map((t) => t.exited)).then(() => undefined);
  all.catch(() => undefined);
  return all;
}

/**
 * Closes /dev/ublkcN, deletes the device when `deleteId` is given, closes the control device and
 * the target. Without `deleteId` the device stays (quiesced or recovering) for a next daemon.
 */
async function release(held: Held, deleteId?: number): Promise<void> {
  if (held.charFd >= 0) close(held.charFd);
  try {
    // Waits until nothing references /dev/ublkcN; every queue thread has unmapped by now.
    if (deleteId !== undefined) await held.control.delDev(deleteId);
  } catch (err) {
    if (!isControlError(err, 'ENODEV')) throw err;
  } finally {
    held.control.close();
    await held.setup.close?.();
  }
}
