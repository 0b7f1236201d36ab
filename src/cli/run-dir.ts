import { mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddOptions } from './args.js';

/**
 * What a daemon shares with later `ublk` commands: who serves the device (for `list`), and how it
 * was made (for `recover`). One JSON file per device, replaced atomically, removed on delete.
 */
export interface DeviceRecord {
  devId: number;
  pid: number;
  queues: { tid: number; affinity: number[] }[];
  /** The target's own description, printed by `list` as `target {...}`. */
  target: Record<string, unknown>;
  /** Where the target came from: a built-in name or a module path, resolved. */
  targetSource: string;
  options: AddOptions;
}

/**
 * /run/ublksrvd for root, as ublksrv; a user serving unprivileged devices keeps their records in
 * their own runtime dir, which no other user can write.
 */
export function runDir(): string {
  if (process.env.UBLK_RUN_DIR) return process.env.UBLK_RUN_DIR;
  const uid = process.getuid?.() ?? 0;
  if (uid === 0) return '/run/ublksrvd';
  return join(process.env.XDG_RUNTIME_DIR ?? join(tmpdir(), `ublk-${uid}`), 'ublksrvd');
}

function recordPath(devId: number): string {
  return join(runDir(), `${devId}.json`);
}

export function writeRecord(record: DeviceRecord): void {
  mkdirSync(runDir(), { recursive: true });
  const path = recordPath(record.devId);
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(record, null, 2) + '\n');
  renameSync(tmp, path);
}

/** A missing or unreadable record is not an error: it is what a crashed daemon leaves behind. */
export function readRecord(devId: number): DeviceRecord | undefined {
  try {
    const record = JSON.parse(readFileSync(recordPath(devId), 'utf8')) as DeviceRecord;
    return record.devId === devId ? record : undefined;
  } catch {
    return undefined;
  }
}

export function removeRecord(devId: number): void {
  rmSync(recordPath(devId), { force: true });
}

export function recordedDeviceIds(): number[] {
  let names: string[];
  try {
    names = readdirSync(runDir());
  } catch {
    return [];
  }
  return names
    .map((name) => /^(\d+)\.json$/.exec(name))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
}

// Whether a record's daemon is still there: the one /proc reading every module uses.
export { processExists as isProcessAlive } from '../processes.js';
