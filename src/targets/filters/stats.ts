import { writeFileSync, renameSync } from 'node:fs';
import { UserError } from '../../errors.js';
import { defineFilter, type FilterHandlers, type NextHandlers } from '../../ublk/filter.js';
import type { MaybePromise, IoResult } from '../../ublk/target.js';
import { OPS, type Op } from './options.js';

/**
 * nbdkit's stats filter: per request kind, the requests, bytes, failures and a latency histogram,
 * written to --stats_file when the device goes away and whenever the daemon gets SIGUSR1. The
 * counters live in a SharedArrayBuffer that every queue thread adds to atomically, so the main
 * thread reads all queues' counts without a message.
 */

/** Latency buckets: [0, 2) µs, then [2^i, 2^(i+1)) µs; the last holds everything above. */
export const BUCKETS = 32;
const OPS_AT = 0;
const BYTES_AT = 1;
const ERRORS_AT = 2;
const NANOS_AT = 3;
const HISTOGRAM_AT = 4;
const STRIDE = HISTOGRAM_AT + BUCKETS;

export function newCounters(): SharedArrayBuffer {
  return new SharedArrayBuffer(OPS.length * STRIDE * 8);
}

export function bucketOf(nanos: number): number {
  const micros = nanos / 1000;
  return micros < 2 ? 0 : Math.min(BUCKETS - 1, Math.floor(Math.log2(micros)));
}

export function record(
  counters: BigInt64Array,
  op: Op,
  bytes: number,
  nanos: number,
  ok: boolean,
): void {
  const at = OPS.indexOf(op) * STRIDE;
  Atomics.add(counters, at + OPS_AT, 1n);
  if (ok) Atomics.add(counters, at + BYTES_AT, BigInt(bytes));
  else Atomics.add(counters, at + ERRORS_AT, 1n);
  Atomics.add(counters, at + NANOS_AT, BigInt(Math.round(nanos)));
  Atomics.add(counters, at + HISTOGRAM_AT + bucketOf(nanos), 1n);
}

export interface OpStats {
  ops: number;
  bytes: number;
  errors: number;
  histogram: number[];
  meanMicros: number;
}

export function snapshot(counters: BigInt64Array): Record<Op, OpStats> {
  const out = {} as Record<Op, OpStats>;
  OPS.forEach((op, i) => {
    const at = i * STRIDE;
    const get = (k: number) => Number(Atomics.load(counters, at + k));
    const ops = get(OPS_AT);
    const histogram = Array.from({ length: BUCKETS }, (_, b) => get(HISTOGRAM_AT + b));
    out[op] = {
      ops,
      bytes: get(BYTES_AT),
      errors: get(ERRORS_AT),
      histogram,
      meanMicros: ops === 0 ? 0 : get(NANOS_AT) / ops / 1000,
    };
  });
  return out;
}

function bucketName(b: number): string {
  return b === 0 ? '0-2us' : b === BUCKETS - 1 ? `${2 ** b}us-` : `${2 ** b}-${2 ** (b + 1)}us`;
}

/**
 * The stats file: a line per request kind, `read: ops=N bytes=N errors=N mean_us=F`, then, for
 * kinds with requests, its non-empty latency buckets, `  read latency 8-16us: N`.
 */
export function formatStats(stats: Record<Op, OpStats>, elapsedSeconds: number): string {
  const lines = [`elapsed_s=${elapsedSeconds.toFixed(3)}`];
  for (const op of OPS) {
    const s = stats[op];
    lines.push(
      `${op}: ops=${s.ops} bytes=${s.bytes} errors=${s.errors} mean_us=${s.meanMicros.toFixed(1)}`,
    );
    s.histogram.forEach((n, b) => {
      if (n > 0) lines.push(`  ${op} latency ${bucketName(b)}: ${n}`);
    });
  }
  return lines.join('\n') + '\n';
}

function counted<A extends unknown[]>(
  counters: BigInt64Array,
  op: Op,
  serve: (...args: A) => MaybePromise<IoResult>,
  bytes: (...args: A) => number,
): (...args: A) => Promise<IoResult> {
  return async (...args) => {
    const start = process.hrtime.bigint();
    let ok = false;
    try {
      const result = await serve(...args);
      ok = true;
      return result;
    } finally {
      record(counters, op, bytes(...args), Number(process.hrtime.bigint() - start), ok);
    }
  };
}

export function countedHandlers(next: NextHandlers, counters: BigInt64Array): FilterHandlers {
  return {
    read: counted(counters, 'read', next.read, (buf) => buf.length),
    write: counted(counters, 'write', next.write, (buf) => buf.length),
    flush: counted(counters, 'flush', next.flush, () => 0),
    discard: counted(counters, 'discard', next.discard, (_offset, length) => length),
    writeZeroes: counted(counters, 'write_zeroes', next.writeZeroes, (_offset, length) => length),
  };
}

export default defineFilter({
  name: 'stats',
  options: {
    stats_file: {
      type: 'string',
      path: true,
      description: 'where to write the statistics, at exit and on SIGUSR1 to the daemon (required)',
    },
  },
  setup(_next, args) {
    const path = args.stats_file;
    if (!path) throw new UserError('stats: no statistics file: use --stats_file FILE');
    const buffer = newCounters();
    const counters = new BigInt64Array(buffer);
    const started = process.hrtime.bigint();
    const write = () => {
      const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
      // Readers never see half a file.
      const tmp = `${path}.${process.pid}.tmp`;
      writeFileSync(tmp, formatStats(snapshot(counters), elapsed));
      renameSync(tmp, path);
    };
    try {
      write();
    } catch (err) {
      throw new UserError(`stats: cannot write ${path}: ${(err as Error).message}`);
    }
    const onSignal = () => {
      try {
        write();
      } catch (err) {
        console.error(`stats: cannot write ${path}: ${(err as Error).message}`);
      }
    };
    process.on('SIGUSR1', onSignal);
    return {
      shared: buffer,
      info: { stats_file: path },
      close() {
        process.off('SIGUSR1', onSignal);
        write();
      },
    };
  },
  queue(next, buffer: SharedArrayBuffer) {
    return countedHandlers(next, new BigInt64Array(buffer));
  },
});
