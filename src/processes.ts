import { readdirSync, readFileSync, statSync, type Stats } from 'node:fs';
import { majorMinor } from './sys.js';

/*
 * What /proc tells of processes: whether one is there, and what this one holds open. The one
 * place every module asks.
 */

/** /proc/PID/stat's state letter and kernel task flags; undefined when there is no such process. */
function procStat(pid: number): { state: string; flags: number } | undefined {
  if (!(pid > 0)) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) state ppid pgrp session tty_nr tpgid flags ...": comm may hold spaces.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: fields[0], flags: Number(fields[6]) };
  } catch {
    return undefined;
  }
}

const PF_EXITING = 0x4;

/** The process still holds resources: it exists and has not finished exiting (a zombie has). */
export function processExists(pid: number): boolean {
  const stat = procStat(pid);
  return stat !== undefined && stat.state !== 'Z' && stat.state !== 'X';
}

/** Running and not dying: not exiting, no SIGKILL pending (what `kill -9` leaves until it ends). */
export function processRunning(pid: number): boolean {
  const stat = procStat(pid);
  if (!stat || stat.state === 'Z' || stat.state === 'X' || stat.flags & PF_EXITING) return false;
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    for (const field of ['SigPnd', 'ShdPnd']) {
      const mask = new RegExp(`^${field}:\\s*([0-9a-f]+)$`, 'm').exec(status)?.[1] ?? '0';
      if ((BigInt(`0x${mask}`) >> 8n) & 1n) return false; // SIGKILL is signal 9, bit 8
    }
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether an open file is on one of `devices` ("major:minor"): a node of one of them, or a file on
 * a file system that lives on one.
 */
export function isOnDevice(
  st: Pick<Stats, 'dev' | 'rdev' | 'isBlockDevice'>,
  devices: ReadonlySet<string>,
): boolean {
  return (
    (st.isBlockDevice() && devices.has(majorMinor(st.rdev))) || devices.has(majorMinor(st.dev))
  );
}

/** The first fd of this process whose open file is on one of `devices` (see isOnDevice). */
export function ownFdOnDevice(devices: ReadonlySet<string>): string | undefined {
  for (const fd of readdirSync('/proc/self/fd')) {
    let st;
    try {
      // Follows the fd's link to the open file itself: no path lookup, no IO.
      st = statSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // the fd of the directory listing itself, already closed
    }
    if (isOnDevice(st, devices)) return fd;
  }
  return undefined;
}
