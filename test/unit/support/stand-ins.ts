/**
 * Stand-ins for what a queue runs on, so its state machine and its scheduler run without ublk: a
 * descriptor table the test fills, and a ring that records what is prepared and hands back the
 * completions the test queues.
 */
import { UBLK_IO_OP } from '../../../src/ublk/ublk-cmd.js';
import type { QueueResources, QueueRing } from '../../../src/ublk/queue/queue.js';
import type { ForwardedIo } from '../../../src/ublk/queue/forwarded-io.js';
import type { IoDescriptors } from '../../../src/ublk/queue/tag-states.js';
import {
  UD_FORWARDED_IO,
  UD_REGISTER_IO_BUF,
  UD_UNREGISTER_IO_BUF,
  userDataIndex,
  userDataKind,
} from '../../../src/ublk/queue/user-data.js';
import { IOSQE_IO_LINK, type CqeHandler } from '../../../src/uring/index.js';

export interface Request {
  op: number;
  /** In 512-byte sectors. */
  startSector?: number;
  nrSectors?: number;
  opFlags?: number;
}

/** The kernel's descriptor array: what `request` wrote for each tag. */
export class StandInDescriptors implements IoDescriptors {
  private readonly requests = new Map<number, Required<Request>>();

  request(tag: number, request: Request): void {
    this.requests.set(tag, { startSector: 0, nrSectors: 8, opFlags: 0, ...request });
  }

  op(tag: number): number {
    return this.get(tag).op;
  }
  opFlags(tag: number): number {
    return this.get(tag).op | this.get(tag).opFlags;
  }
  nrSectors(tag: number): number {
    return this.get(tag).nrSectors;
  }
  startSector(tag: number): number {
    return this.get(tag).startSector;
  }

  private get(tag: number): Required<Request> {
    return (
      this.requests.get(tag) ?? { op: UBLK_IO_OP.READ, startSector: 0, nrSectors: 0, opFlags: 0 }
    );
  }
}

/** An IO command as the queue wrote it into an SQE: the ublksrv_io_cmd's fields. */
export interface SentCommand {
  cmdOp: number;
  tag: number;
  result: number;
}

/** A target IO the queue prepared: its kind and user_data, which its completion must carry. */
export interface PreparedIo {
  kind:
    | 'read'
    | 'write'
    | 'readFixed'
    | 'writeFixed'
    | 'fsync'
    | 'fallocate'
    | 'send'
    | 'recv'
    | 'timeout';
  userData: number;
  fd?: number;
  length?: number;
  /** File offset (read, write, fallocate). */
  offset?: number;
  /** Memory address; for the fixed kinds, the offset within the registered buffer. */
  address?: number;
  bufIndex?: number;
  /** Prepared with IOSQE_IO_LINK: the next SQE runs once it succeeds. */
  linked?: true;
  /** send and recv: the MSG_* flags. */
  msgFlags?: number;
}

/** Where a tag's last IO command pointed: the SQE's addr and the command's buffer address. */
export interface CommandAddresses {
  sqeAddr: number;
  buffer: number;
}

export class StandInRing implements QueueRing {
  readonly commands: SentCommand[] = [];
  readonly targetIo: PreparedIo[] = [];
  private readonly cqes: [number, number][] = [];
  /** What the next waits return, in turn (then 0). */
  readonly waitResults: number[] = [];
  /** How many completions each wait asked for, in turn. */
  readonly waitCounts: number[] = [];
  closed = false;

  /** Per tag, where its last IO command pointed. */
  readonly commandAddresses = new Map<number, CommandAddresses>();

  /** Per user_data, the SQE flags of its last IO command. */
  readonly commandFlags = new Map<number, number>();
  /** Per user_data, the SQE flags of its last target IO (targetIo). */
  readonly ioFlags = new Map<number, number>();

  readonly sq = {
    spaceLeft: () => 64,
    prepUringCmd: (
      _fd: number,
      cmdOp: number,
      userData: number,
      sqeAddr = 0,
      sqeFlags = 0,
    ): DataView => {
      const view = new DataView(new ArrayBuffer(16));
      this.commandFlags.set(userData, sqeFlags);
      // ublksrv_io_cmd: q_id u16 @0, tag u16 @2, result s32 @4, addr u64 @8; read back once
      // written.
      this.pendingViews.push([cmdOp, userData, sqeAddr, view]);
      return view;
    },
    prepRead: (
      fd: number,
      address: number,
      length: number,
      offset: number,
      userData: number,
      sqeFlags = 0,
    ) => this.prepared({ kind: 'read', userData, fd, length, offset, address }, sqeFlags),
    prepWrite: (
      fd: number,
      address: number,
      length: number,
      offset: number,
      userData: number,
      sqeFlags = 0,
    ) => this.prepared({ kind: 'write', userData, fd, length, offset, address }, sqeFlags),
    prepReadFixed: (
      fd: number,
      address: number,
      length: number,
      offset: number,
      bufIndex: number,
      userData: number,
      sqeFlags = 0,
    ) =>
      this.prepared(
        { kind: 'readFixed', userData, fd, length, offset, address, bufIndex },
        sqeFlags,
      ),
    prepWriteFixed: (
      fd: number,
      address: number,
      length: number,
      offset: number,
      bufIndex: number,
      userData: number,
      sqeFlags = 0,
    ) =>
      this.prepared(
        { kind: 'writeFixed', userData, fd, length, offset, address, bufIndex },
        sqeFlags,
      ),
    prepFsync: (fd: number, _flags: number, userData: number, sqeFlags = 0) =>
      this.prepared({ kind: 'fsync', userData, fd }, sqeFlags),
    prepFallocate: (
      fd: number,
      _mode: number,
      offset: number,
      length: number,
      userData: number,
      sqeFlags = 0,
    ) => this.prepared({ kind: 'fallocate', userData, fd, length, offset }, sqeFlags),
    prepSend: (fd: number, address: number, length: number, msgFlags: number, userData: number) =>
      this.prepared({ kind: 'send', userData, fd, length, address, msgFlags }),
    prepRecv: (fd: number, address: number, length: number, msgFlags: number, userData: number) =>
      this.prepared({ kind: 'recv', userData, fd, length, address, msgFlags }),
    prepTimeout: (timespecAddress: number, userData: number) =>
      this.prepared({ kind: 'timeout', userData, address: timespecAddress }),
  };
  private readonly pendingViews: [number, number, number, DataView][] = [];

  /** Queues a completion for the next drain. */
  complete(userData: number, res: number): void {
    this.cqes.push([userData, res]);
  }

  submit(): number {
    this.collect();
    return 0;
  }
  submitAndWait(minComplete: number): number {
    // Bounded: a loop left waiting on the stand-in (which never sleeps) calls this on every turn.
    if (this.waitCounts.length < 64) this.waitCounts.push(minComplete);
    this.collect();
    return this.waitResults.shift() ?? 0;
  }
  drain(onCqe: CqeHandler): number {
    const batch = this.cqes.splice(0);
    for (const [userData, res] of batch) onCqe(userData, res, 0);
    return batch.length;
  }
  awaitCqeInEventLoop(): boolean {
    return this.cqes.length === 0;
  }
  cancelEventLoopWait(): void {}
  close(): void {
    this.closed = true;
  }

  /** The commands written so far, decoded from their SQE command areas. */
  sent(): SentCommand[] {
    this.collect();
    return this.commands;
  }

  private collect(): void {
    for (const [cmdOp, userData, sqeAddr, view] of this.pendingViews.splice(0)) {
      this.commands.push({ cmdOp, tag: userData, result: view.getInt32(4, true) });
      const buffer = Number(view.getBigUint64(8, true));
      this.commandAddresses.set(userData, { sqeAddr, buffer });
    }
  }

  private prepared(io: PreparedIo, sqeFlags = 0): boolean {
    this.ioFlags.set(io.userData, sqeFlags);
    this.targetIo.push(sqeFlags & IOSQE_IO_LINK ? { ...io, linked: true } : io);
    return true;
  }
}

/** A queue's resources over the stand-ins and a plain buffer. */
export function standInResources(
  ring: StandInRing,
  descs: StandInDescriptors,
  bytes: number,
): QueueResources & { released: () => boolean; fatalError: () => unknown; logged: string[] } {
  let released = false;
  let fatal: unknown;
  const logged: string[] = [];
  return {
    ring,
    descs,
    buffer: { bytes: new Uint8Array(bytes), address: 0x10000 },
    release: () => void (released = true),
    fatal: (err) => {
      fatal = err;
    },
    fatalError: () => fatal,
    log: (line) => void logged.push(line),
    logged,
    released: () => released,
  };
}

/** A forwarded request's CQE (its IO, REGISTER_IO_BUF or UNREGISTER_IO_BUF), as the queue hands it. */
export function forwardedCqe(forwarded: ForwardedIo, userData: number, res: number): void {
  const tag = userDataIndex(userData);
  switch (userDataKind(userData)) {
    case UD_FORWARDED_IO:
      return forwarded.complete(tag, res);
    case UD_REGISTER_IO_BUF:
      return forwarded.completeRegister(tag, res);
    case UD_UNREGISTER_IO_BUF:
      return forwarded.completeUnregister(tag, res);
    default:
      throw new Error(`user_data ${userData} is no forwarded request's`);
  }
}
