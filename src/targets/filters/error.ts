import { errnoError, UserError } from '../../errors.js';
import { defineFilter, type FilterHandlers } from '../../ublk/target/filter.js';
import { HOOK_PASS, hookFail } from '../../ublk/queue/request-hooks.js';
import { parseErrno, parseOps, parseRange, parseRate, type Op } from './filter-options.js';

/**
 * nbdkit's error filter: requests of the chosen kinds fail with an errno, at a rate, or where
 * they touch a byte range, or both (then at the rate within the range). FLUSH has no range: with
 * --error_range it fails at the rate alone. What reaches the caller is the block layer's mapping
 * of the errno: EIO for most, ENOSPC, ETIMEDOUT, EOPNOTSUPP and a few others as themselves.
 */
export interface ErrorPlan {
  ops: Op[];
  rate: number;
  range?: { start: number; end: number };
  errno: number;
}

export function errorPlan(args: {
  error_ops?: string;
  error_rate?: string;
  error_range?: string;
  error_errno?: string;
}): ErrorPlan {
  if (args.error_rate === undefined && args.error_range === undefined) {
    throw new UserError(
      'error: say which requests fail: --error_rate RATE (0 to 1), --error_range START-END, or both',
    );
  }
  return {
    ops: parseOps(args.error_ops ?? 'read,write', 'error_ops'),
    rate: args.error_rate === undefined ? 1 : parseRate(args.error_rate, 'error_rate'),
    range: args.error_range === undefined ? undefined : parseRange(args.error_range, 'error_range'),
    errno: parseErrno(args.error_errno ?? 'EIO', 'error_errno'),
  };
}

/** Whether a request of `op` at [offset, offset + length) fails; `random` in [0, 1). */
export function fails(
  plan: ErrorPlan,
  op: Op,
  offset: number,
  length: number,
  random: number,
): boolean {
  if (!plan.ops.includes(op)) return false;
  const { range } = plan;
  if (range && op !== 'flush' && (offset + length <= range.start || offset >= range.end)) {
    return false;
  }
  return random < plan.rate;
}

export default defineFilter({
  name: 'error',
  options: {
    error_ops: {
      type: 'string',
      description:
        'request kinds that fail: read,write,flush,discard,write_zeroes or all (read,write)',
    },
    error_rate: {
      type: 'string',
      description: 'share of those requests that fail, 0 to 1 or a percentage (1 with a range)',
    },
    error_range: {
      type: 'string',
      description: 'fail only requests touching bytes START-END (END excluded, e.g. 1M-2M)',
    },
    error_errno: { type: 'string', description: 'the errno they fail with (EIO)' },
  },
  // The hook fails requests before the layer below sees them; the handlers serve filters stacked
  // above that call next.
  keepsForward: true,
  setup(_next, args) {
    const plan = errorPlan(args);
    return { shared: plan, info: { error: plan } };
  },
  queue(next, plan: ErrorPlan) {
    const check = (op: Op, offset: number, length: number) => {
      if (fails(plan, op, offset, length, Math.random())) {
        throw errnoError(`error filter (${op})`, plan.errno);
      }
    };
    const { ops, errno } = plan;
    const failed = hookFail(errno);
    const own: FilterHandlers = {
      hook: {
        before: (kind, offset, length) =>
          ops.includes(kind) && fails(plan, kind, offset, length, plan.rate < 1 ? Math.random() : 0)
            ? failed
            : HOOK_PASS,
      },
    };
    for (const op of plan.ops) {
      if (op === 'read') {
        own.read = (buf, offset) => (check(op, offset, buf.length), next.read(buf, offset));
      } else if (op === 'write') {
        own.write = (buf, offset, flags) => (
          check(op, offset, buf.length),
          next.write(buf, offset, flags)
        );
      } else if (op === 'flush') {
        own.flush = () => (check(op, 0, 0), next.flush());
      } else if (op === 'discard') {
        own.discard = (offset, length) => (check(op, offset, length), next.discard(offset, length));
      } else {
        own.writeZeroes = (offset, length, flags) => (
          check(op, offset, length),
          next.writeZeroes(offset, length, flags)
        );
      }
    }
    return own;
  },
});
