import { errnoName } from '../../errors.js';
import { UBLK_IO_OP } from '../ublk-cmd.js';

/** A request whose handler threw or rejected, and the result it was failed with (-errno). */
export interface FailedRequest {
  tag: number;
  op: number;
  offset: number;
  length: number;
  result: number;
}

/** `ublk add --debug_mask` bit: log every failed request, not only the first of each cause. */
export const DEBUG_EVERY_FAILURE = 1;

export interface FailureLogOptions {
  devId: number;
  queueId: number;
  /** Log every failure, not only the first of each cause (DEBUG_EVERY_FAILURE). */
  everyFailure?: boolean;
  /** How often the repeats of a logged cause are counted in one line. */
  intervalMs?: number;
  write?: (line: string) => void;
}

const OP_NAMES = new Map<number, string>(
  Object.entries(UBLK_IO_OP).map(([name, op]) => [op, name]),
);

/**
 * Handler failures, on the queue thread's stderr (the daemon's log): the first of each cause with
 * the request it failed, then, while the cause repeats, one line per interval that counts the
 * repeats, so that a target failing every request cannot flood the log. A cause is the op and the
 * error's code (or its message, for an error without one).
 */
export class FailureLog {
  private readonly repeats = new Map<string, number>();
  private readonly seen = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private readonly write: (line: string) => void;
  private readonly intervalMs: number;

  constructor(private readonly options: FailureLogOptions) {
    this.write = options.write ?? ((line) => process.stderr.write(line));
    this.intervalMs = options.intervalMs ?? 10_000;
  }

  record(request: FailedRequest, err: unknown): void {
    const op = OP_NAMES.get(request.op) ?? `op ${request.op}`;
    const reason = describe(err);
    const cause = `${op}: ${causeOf(err)}`;
    if (this.options.everyFailure || !this.seen.has(cause)) {
      this.seen.add(cause);
      const { devId, queueId } = this.options;
      this.write(
        `ublk device ${devId} queue ${queueId} tag ${request.tag}: ${op} of ${request.length} bytes at offset ${request.offset} failed with ${errnoName(-request.result)}: ${reason}\n`,
      );
      return;
    }
    this.repeats.set(cause, (this.repeats.get(cause) ?? 0) + 1);
    this.timer ??= setTimeout(() => this.flush(), this.intervalMs).unref();
  }

  /** Writes the counts of repeated causes since the last flush. */
  flush(): void {
    this.timer = undefined;
    const { devId, queueId } = this.options;
    for (const [cause, count] of this.repeats) {
      this.write(
        `ublk device ${devId} queue ${queueId}: ${count} more failed requests (${cause}) in the last ${this.intervalMs / 1000} s\n`,
      );
    }
    this.repeats.clear();
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) return err.message.split('\n')[0];
  return String(err);
}

function causeOf(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : describe(err);
}
