import { constants as fsConstants, existsSync, statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import { UserError } from '../errors.js';
import { close, constants as sysConstants, isErrnoError, open } from '../sys.js';
import { loadTarget, resolveTargetSource } from '../targets/load.js';
import type { TargetArgs } from '../cli/args.js';
import type { Capabilities, TargetSetup } from '../targets/target.js';
import { AUTO_DEV_ID, featureNames, UBLK_F } from './abi.js';
import { Control, isControlError, type DevInfo } from './control.js';
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
    return new UserError(`${(err as Error).message}: run as root (sudo)`);
  }
  return err;
}

/**
 * A running ublk device served by this process: one worker thread per hardware queue, the target's
 * handlers in each. Made by {@link createDevice}; gone after {@link Device.stop}, or when someone
 * else stops it (`ublk del`), which `closed` reports.
 */
export class Device {
  /** Resolves once the device is deleted and everything of it released, whoever stopped it. */
  readonly closed: Promise<void>;
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly info: DevInfo,
    readonly queues: QueueInfo[],
    readonly target: { name: string; size: number; info: Record<string, unknown> },
    private readonly control: Control,
    private readonly charFd: number,
    private readonly setup: TargetSetup,
    private readonly queuesStopped: Promise<void>,
  ) {
    // A stop from outside (STOP_DEV by `ublk del`) shows up as every queue ending on its own.
    this.closed = queuesStopped.then(() => this.stop());
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
      info = await control
        .addDev({
          devId,
          nrHwQueues: options.queues ?? 1,
          queueDepth: options.depth ?? 128,
          maxIoBufBytes: options.maxIoBufBytes ?? 524288,
          flags: options.flags ?? 0,
        })
        .catch((err: unknown) => {
          throw explainControlError(err, devId);
        });
      const refused = featureNames((options.flags ?? 0) - ((options.flags ?? 0) & info.flags));
      if (refused.length > 0) {
        throw new UserError(`this kernel's ublk driver does not support ${refused.join(', ')}`);
      }
      const params = paramsFor(setup.size, caps, info.maxIoBufBytes, sysConstants.PAGE_SIZE);
      charFd = await openCharDevice(info.devId);
      await control.setParams(info.devId, params);
      const queues = await startQueues(control, info, charFd, source, setup.shared, workers);
      await control.startDev(info.devId, process.pid);
      info = await control.getDevInfo(info.devId);
      return new Device(
        info,
        queues,
        { name: target.name, size: setup.size, info: setup.info ?? {} },
        control,
        charFd,
        setup,
        allExited(workers),
      );
    } catch (err) {
      await abandon(control, info, charFd, workers, setup);
      throw err;
    }
  }
}

/** Creates and starts a ublk device served by this process. */
export function createDevice(options: DeviceOptions): Promise<Device> {
  return Device.create(options);
}

/** The kernel creates /dev/ublkcN during ADD_DEV, but udev may still hold it for a moment. */
async function openCharDevice(devId: number): Promise<number> {
  const path = `/dev/ublkc${devId}`;
  for (let attempt = 0; ; attempt++) {
    try {
      return open(path, fsConstants.O_RDWR | 0o2000000 /* O_CLOEXEC */, 0);
    } catch (err) {
      const retry = isErrnoError(err, 'ENOENT') || isErrnoError(err, 'EBUSY');
      if (!retry || attempt >= 100) throw err;
      await sleep(50);
    }
  }
}

/**
 * One worker per hardware queue, pushed to `workers` as they are made so that a failure leaves the
 * caller able to stop them; resolves once every queue has fetched all its tags.
 */
async function startQueues(
  control: Control,
  info: DevInfo,
  charFd: number,
  targetSource: string,
  shared: unknown,
  workers: Worker[],
): Promise<QueueInfo[]> {
  const ready: Promise<QueueInfo>[] = [];
  for (let queueId = 0; queueId < info.nrHwQueues; queueId++) {
    const affinity = await control.getQueueAffinity(info.devId, queueId);
    const data: QueueWorkerData = {
      queueId,
      depth: info.queueDepth,
      bufferBytes: info.maxIoBufBytes,
      charFd,
      encodedOpcodes: (info.flags & UBLK_F.CMD_IOCTL_ENCODE) !== 0,
      targetSource,
      shared,
      affinity,
    };
    const worker = new Worker(WORKER_URL, { workerData: data });
    exitOf.set(worker, new Promise((resolve) => worker.once('exit', () => resolve())));
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

/** Recorded at spawn, so that a worker which exits early is not waited for forever. */
const exitOf = new WeakMap<Worker, Promise<void>>();

function allExited(workers: Worker[]): Promise<void> {
  return Promise.all(workers.map((w) => exitOf.get(w))).then(() => undefined);
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
    await Promise.race([allExited(workers), sleep(10_000)]);
    await Promise.all(workers.map((w) => w.terminate()));
  }
  await release(charFd, control, info.devId, setup).catch(() => undefined);
}

/** "major:minor" of a device node, "0:0" when it does not exist. */
export function deviceNumbers(path: string): string {
  if (!existsSync(path)) return '0:0';
  const rdev = statSync(path).rdev;
  // glibc's gnu_dev_major/minor.
  const major = ((rdev >> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
  const minor = (rdev & 0xff) | ((rdev >> 12) & ~0xff);
  return `${major}:${minor}`;
}
