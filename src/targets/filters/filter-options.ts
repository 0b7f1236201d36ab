/** How the built-in filters read their option values: pure, so unit tests cover each rule. */
import { constants as osConstants } from 'node:os';
import { UserError } from '../../errors.js';
import { parseSize } from '../size.js';

const DURATION_UNITS: Record<string, number> = { us: 0.001, ms: 1, s: 1000 };

/** Milliseconds: `10` (milliseconds), `10ms`, `1.5s`, `500us`. */
export function parseDuration(text: string, what: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*(us|ms|s)?$/.exec(text.trim());
  const value = match ? Number(match[1]) * DURATION_UNITS[match[2] ?? 'ms'] : NaN;
  if (!Number.isFinite(value)) {
    throw new UserError(
      `invalid --${what} '${text}': expected milliseconds such as 10, 10ms or 1.5s`,
    );
  }
  return value;
}

/** A probability from 0 to 1: `0.1`, or a percentage `10%`. */
export function parseRate(text: string, what: string): number {
  const match = /^(\d+(?:\.\d+)?)(%?)$/.exec(text.trim());
  const value = match ? Number(match[1]) / (match[2] ? 100 : 1) : NaN;
  if (!(value >= 0 && value <= 1)) {
    throw new UserError(
      `invalid --${what} '${text}': expected a rate from 0 to 1, such as 0.1 or 10%`,
    );
  }
  return value;
}

/** A byte range START-END, END excluded, in sizes as parseSize reads them (START may be 0). */
export function parseRange(text: string, what: string): { start: number; end: number } {
  const parts = text.split('-');
  const bad = () =>
    new UserError(
      `invalid --${what} '${text}': expected START-END in bytes, such as 0-4096 or 1M-2M`,
    );
  if (parts.length !== 2) throw bad();
  const size = (part: string) => (part.trim() === '0' ? 0 : parseSize(part, what));
  const [start, end] = parts.map(size);
  if (end <= start) throw bad();
  return { start, end };
}

/** An errno by name (EIO, ENOSPC...) or number; positive. */
export function parseErrno(text: string, what: string): number {
  const name = text.trim().toUpperCase();
  const errno = /^\d+$/.test(name)
    ? Number(name)
    : (osConstants.errno as Record<string, number>)[name];
  if (!Number.isInteger(errno) || errno <= 0 || errno > 4095) {
    throw new UserError(
      `invalid --${what} '${text}': expected an errno name such as EIO or ENOSPC`,
    );
  }
  return errno;
}

/** Request kinds as the filters' options name them. */
export const OPS = ['read', 'write', 'flush', 'discard', 'write_zeroes'] as const;
export type Op = (typeof OPS)[number];

/** A comma-separated list of request kinds: `read,write`, or `all`. */
export function parseOps(text: string, what: string): Op[] {
  if (text.trim() === 'all') return [...OPS];
  const ops = text.split(',').map((s) => s.trim());
  for (const op of ops) {
    if (!(OPS as readonly string[]).includes(op)) {
      throw new UserError(
        `invalid --${what} '${text}': '${op}' is no request kind; use ${OPS.join(', ')} or all`,
      );
    }
  }
  return [...new Set(ops as Op[])];
}
