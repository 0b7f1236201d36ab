import { readdirSync } from 'node:fs';
import { recordedDeviceIds } from './run-dir.js';

/** Every ublk device id the kernel knows (its ublkc class), plus any the run dir remembers. */
export function knownDeviceIds(): number[] {
  const ids = new Set(recordedDeviceIds());
  try {
    for (const name of readdirSync('/sys/class/ublk-char')) {
      const m = /^ublkc(\d+)$/.exec(name);
      if (m) ids.add(Number(m[1]));
    }
  } catch {
    // No ublk module loaded: only the run dir speaks.
  }
  return [...ids].sort((a, b) => a - b);
}
