import { readFileSync } from 'node:fs';

/* Whether a process is there, read from /proc: the one place every module asks. */

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
