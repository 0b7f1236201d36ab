import { writeFileSync, renameSync } from 'node:fs';
import { UserError } from '../../errors.js';
import { defineFilter, type FilterHandlers, type NextHandlers } from '../../ublk/target/filter.js';
import { HOOK_PASS, type RequestHook } from '../../ublk/queue/request-hooks.js';
import type { MaybePromise, IoResult } from '../../ublk/target/contract.js';
import { OPS, type Op } from './filter-options.js';

/**
 * nbdkit's stats filter: per request kind, the requests, bytes, failures and a latency histogram,
 * written to --stats_file when the device goes away and whenever the daemon gets SIGUSR1. The
 * counters live in a SharedArrayBuffer, a region per queue thread, so the main thread reads all
 * queues' counts without a message. Requests are counted by a hook, so a forwarding layer below
 * keeps its forward and zero copy.
 */

/** Latency buckets: [0, 2) µs, then [2^i, 2^(i+1)) µs; the last holds everything above. */
export const BUCKETS = 32;
const OPS_AT = 0;
const BYTES_AT = 1;
const ERRORS_AT = 2;
const NANOS_AT = 3;
const HISTOGRAM_AT = 4;
const STRIDE = HISTOGRAM_AT + BUCKETS;
/** One queue's counters: a stride per request kind. */
const REGION = OPS.length * STRIDE;

/**
 * The counters of `queues` queues, a region each: a queue thread is its region's only writer, so
 * it adds with plain stores (no BigInt, no atomics: nothing allocated per request), and the main
 * thread sums the regions (doubles count exactly up to 2^53).
 */
export function newCounters(queues: number): SharedArrayBuffer {
  return new SharedArrayBuffer(queues * REGION * 8);
}

/** The region of queue `queueId`. */
export function queueCounters(buffer: SharedArrayBuffer, queueId: number): Float64Array {
  return new Float64Array(buffer, queueId * REGION * 8, REGION);
}

export function bucketOf(nanos: number): number {
  const micros = nanos / 1000;
  return micros < 2 ? 0 : Math.min(BUCKETS - 1, Math.floor(Math.log2(micros)));
}

export function record(
  counters: Float64Array,
  op: Op,
  bytes: number,
  nanos: number,
  ok: boolean,
): void {
  const at = OPS.indexOf(op) * STRIDE;
  counters[at + OPS_AT]++;
  if (ok) counters[at + BYTES_AT] += bytes;
  else counters[at + ERRORS_AT]++;
  counters[at + NANOS_AT] += nanos;
  counters[at + HISTOGRAM_AT + bucketOf(nanos)]++;
}

export interface OpStats {
  ops: number;
  bytes: number;
  errors: number;
  histogram: number[];
  meanMicros: number;
}

/** Every queue's counters, summed. */
export function snapshot(buffer: SharedArrayBuffer): Record<Op, OpStats> {
  const all = new Float64Array(buffer);
  const out = {} as Record<Op, OpStats>;
  OPS.forEach((op, i) => {
    const get = (k: number) => {
      let sum = 0;
      for (let region = 0; region < all.length; region += REGION)
        sum += all[region + i * STRIDE + k];
      return sum;
    };
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
  counters: Float64Array,
  op: Op,
  serve: (...args: A) => MaybePromise<IoResult>,
  bytes: (...args: A) => number,
): (...args: A) => Promise<IoResult> {
  return async (...args) => {
    const start = performance.now();
    let ok = false;
    try {
      const result = await serve(...args);
      ok = true;
      return result;
    } finally {
      record(counters, op, bytes(...args), (performance.now() - start) * 1e6, ok);
    }
  };
}

/** For filters stacked above that serve requests themselves (they call next): a promise each. */
export function countedHandlers(next: NextHandlers, counters: Float64Array): FilterHandlers {
  return {
    read: counted(counters, 'read', next.read, (buf) => buf.length),
    write: counted(counters, 'write', next.write, (buf) => buf.length),
    flush: counted(counters, 'flush', next.flush, () => 0),
    discard: counted(counters, 'discard', next.discard, (_offset, length) => length),
    writeZeroes: counted(counters, 'write_zeroes', next.writeZeroes, (_offset, length) => length),
  };
}

/**
 * What the queue runs: each request's start time in a typed array made once, its latency and
 * bytes counted from its result. performance.now() is the cheapest clock Node has (about 40 ns
 * here; process.hrtime.bigint() makes a BigInt per call).
 */
export function countingHook(counters: Float64Array, depth: number): RequestHook {
  const started = new Float64Array(depth);
  return {
    before(_kind, _offset, _length, tag) {
      started[tag] = performance.now();
      return HOOK_PASS;
    },
    after(kind, _offset, length, result, tag) {
      record(counters, kind, length, (performance.now() - started[tag]) * 1e6, result >= 0);
    },
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
  // The hook counts; the handlers serve filters stacked above that call next.
  keepsForward: true,
  setup(_next, args, env) {
    const path = args.stats_file;
    if (!path) throw new UserError('stats: no statistics file: use --stats_file FILE');
    const buffer = newCounters(env.queues);
    const started = performance.now();
    const write = () => {
      const elapsed = (performance.now() - started) / 1e3;
      // Readers never see half a file.
      const tmp = `${path}.${process.pid}.tmp`;
      writeFileSync(tmp, formatStats(snapshot(buffer), elapsed));
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
  queue(next, buffer: SharedArrayBuffer, { queueId, depth }) {
    const counters = queueCounters(buffer, queueId);
    return { ...countedHandlers(next, counters), hook: countingHook(counters, depth) };
  },
});
