import { UserError } from '../errors.js';

/** Strict integer parsing: unlike strtol, "12abc", "" and "1e3" are errors, not 12, 0 and 1. */
export function parseInteger(text: string, what: string, min: number, max: number): number {
  const trimmed = text.trim();
  const value = /^(0x[0-9a-f]+|\d+)$/i.test(trimmed) ? Number(trimmed) : NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new UserError(`invalid ${what} '${text}': expected an integer from ${min} to ${max}`);
  }
  return value;
}

export function parseBool01(text: string, what: string): boolean {
  if (text !== '0' && text !== '1')
    throw new UserError(`invalid ${what} '${text}': expected 0 or 1`);
  return text === '1';
}

// The size syntax belongs to the target API (targets parse their own sizes); re-exported here
// for the CLI code that always found it in this module.
export { parseSize } from '../targets/size.js';
