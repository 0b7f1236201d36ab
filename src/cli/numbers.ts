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

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  K: 2 ** 10,
  M: 2 ** 20,
  G: 2 ** 30,
  T: 2 ** 40,
};

/** Sizes as operators write them: 4096, 512K, 512M, 1G, 2T (binary units, optional "iB"/"B"). */
export function parseSize(text: string, what: string): number {
  const match = /^(\d+)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  const value = match ? Number(match[1]) * SIZE_UNITS[match[2].toUpperCase()] : NaN;
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new UserError(`invalid ${what} '${text}': expected a size such as 4096, 512M or 1G`);
  }
  return value;
}
