import { UserError } from '../errors.js';

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
