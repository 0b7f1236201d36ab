/**
 * Stand-ins for what a queue runs on, so its state machine and its scheduler run without ublk: a
 * descriptor table the test fills, and a ring that records what is prepared and hands back the
 * completions the test queues.
 */
import { UBLK_IO_OP } from '../../../src/ublk/abi.js';
import type { QueueResources, QueueRing } from '../../../src/ublk/queue.js';
import type { IoDescriptors } from '../../../src/ublk/tag-states.js';
import type { CqeHandler } from '../../../src/uring/index.js';

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
  kind: 'read' | 'write' | 'fsync' | 'fallocate';
  userData: number;
  length?: number;
}

export class StandInRing implements QueueRing {
  readonly commands: SentCommand[] = [];
  readonly targetIo: PreparedIo[] = [];
  private readonly cqes: [number, number][] = [];
  /** What the next waits return, in turn (then 0). */
  readonly waitResults: number[] = [];
  closed = false;

  readonly sq = {
    prepUringCmd: (_fd: number, cmdOp: number, userData: number): DataView => {
      const view = new DataView(new ArrayBuffer(16));
      // ublksrv_io_cmd: q_id u16 @0, tag u16 @2, result s32 @4; read back once written.
      this.pendingViews.push([cmdOp, userData, view]);
      return view;
    },
    prepRead: (_fd: number, _address: number, length: number, _offset: number, userData: number) =>
      this.prepared({ kind: 'read', userData, length }),
    prepWrite: (_fd: number, _address: number, length: number, _offset: number, userData: number) =>
      this.prepared({ kind: 'write', userData, length }),
    prepFsync: (_fd: number, _flags: number, userData: number) =>
      this.prepared({ kind: 'fsync', userData }),
    prepFallocate: (
      _fd: number,
      _mode: number,
      _offset: number,
      _length: number,
      userData: number,
    ) => this.prepared({ kind: 'fallocate', userData }),
  };
  private readonly pendingViews: [number, number, DataView][] = [];

  /** Queues a completion for the next drain. */
  complete(userData: number, res: number): void {
    this.cqes.push([userData, res]);
  }

  submit(): number {
    this.collect();
    return 0;
  }
  submitAndWait(): number {
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
    for (const [cmdOp, userData, view] of this.pendingViews.splice(0)) {
      this.commands.push({ cmdOp, tag: userData, result: view.getInt32(4, true) });
    }
  }

  private prepared(io: PreparedIo): boolean {
    this.targetIo.push(io);
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
