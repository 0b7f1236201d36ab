import { UserError } from '../errors.js';
import { UBLK_F } from '../ublk/ublk-cmd.js';

/**
 * The text layouts of `list`: ublksrv 1.8's, the default, and 1.3's (before ublksrv 1.4 moved the
 * flags to a line of their own), which `UBLK_LIST_FORMAT=1.3` keeps for scripts written for it.
 */
export type ListLayout = '1.8' | '1.3';

/** The layout `UBLK_LIST_FORMAT` asks for; anything but unset, empty, 1.8 or 1.3 is refused. */
export function listLayout(env: NodeJS.ProcessEnv = process.env): ListLayout {
  const asked = env.UBLK_LIST_FORMAT;
  if (asked === undefined || asked === '' || asked === '1.8') return '1.8';
  if (asked === '1.3') return '1.3';
  throw new UserError(
    `UBLK_LIST_FORMAT=${asked} is not a list layout: use 1.8 (the default) or 1.3`,
  );
}

/**
 * The flag names of ublksrv 1.8's `flags 0x.. [ ... ]` line, in its order. Flags it does not name
 * (IO_DESC_SIZE) show in the hex only.
 */
const LIST_FLAG_NAMES: readonly (readonly [number, string])[] = [
  [UBLK_F.SUPPORT_ZERO_COPY, 'SUPPORT_ZERO_COPY'],
  [UBLK_F.AUTO_BUF_REG, 'AUTO_ZC'],
  [UBLK_F.URING_CMD_COMP_IN_TASK, 'URING_CMD_COMP_IN_TASK'],
  [UBLK_F.NEED_GET_DATA, 'NEED_GET_DATA'],
  [UBLK_F.UNPRIVILEGED_DEV, 'UNPRIVILEGED_DEV'],
  [UBLK_F.USER_RECOVERY, 'RECOVERY'],
  [UBLK_F.USER_RECOVERY_REISSUE, 'RECOVERY_REISSUE'],
  [UBLK_F.CMD_IOCTL_ENCODE, 'CMD_IOCTL_ENCODE'],
  [UBLK_F.USER_COPY, 'USER_COPY'],
  [UBLK_F.ZONED, 'ZONED'],
  [UBLK_F.USER_RECOVERY_FAIL_IO, 'RECOVERY_FAIL_IO'],
  [UBLK_F.UPDATE_SIZE, 'UPDATE_SIZE'],
  [UBLK_F.QUIESCE, 'QUIESCE'],
  [UBLK_F.PER_IO_DAEMON, 'PER_IO_DAEMON'],
  [UBLK_F.BUF_REG_OFF_DAEMON, 'BUF_REG_OFF_DAEMON'],
  [UBLK_F.BATCH_IO, 'BATCH_IO'],
  [UBLK_F.INTEGRITY, 'INTEGRITY'],
  [UBLK_F.SAFE_STOP_DEV, 'SAFE_STOP_DEV'],
  [UBLK_F.NO_AUTO_PART_SCAN, 'NO_AUTO_PART_SCAN'],
  [UBLK_F.SHMEM_ZC, 'SHMEM_ZC'],
];

/** ublksrv 1.8's names of the flags set in `flags`, in its order. */
export function listFlagNames(flags: number): string[] {
  // Arithmetic rather than `&`, which would cut the u64 mask to 32 bits.
  return LIST_FLAG_NAMES.filter(([bit]) => Math.floor(flags / bit) % 2 === 1).map(([, n]) => n);
}

/** Everything `ublk list` shows about one device, gathered from the kernel and the run dir. */
export interface DeviceListing {
  devId: number;
  nrHwQueues: number;
  queueDepth: number;
  logicalBlockSize: number;
  devSectors: number;
  maxIoBufBytes: number;
  daemonPid: number;
  /** As GET_DEV_INFO reports them, the ones the kernel added on its own included. */
  flags: number;
  state: string;
  /** "major:minor" of /dev/ublkcN and /dev/ublkbN; "0:0" when the node does not exist. */
  ublkc: string;
  ublkb: string;
  ownerUid: number;
  ownerGid: number;
  queues: { tid: number; affinity: number[] }[];
  target?: Record<string, unknown>;
}

/** JSON with sorted keys, as ublksrv's target line prints it. */
export function sortedJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}

/** Line 2 (and 3 in 1.8): what the daemon and the kernel say of the device. */
function statusLines(d: DeviceListing, layout: ListLayout): string[] {
  const head = `\tmax rq size ${d.maxIoBufBytes} daemon pid ${d.daemonPid}`;
  const flags = `flags 0x${d.flags.toString(16)}`;
  if (layout === '1.3') return [`${head} ${flags} state ${d.state}`];
  const names = listFlagNames(d.flags).map((name) => ` ${name}`);
  return [`${head} state ${d.state}`, `\t${flags} [${names.join('')} ]`];
}

/**
 * ublksrv's `list` text, field for field: scripts split these lines on whitespace. In both layouts
 * the daemon pid is field 7 of line 2 and a queue's tid field 4 of its line; the state is field 9
 * of line 2 in 1.8, field 11 in 1.3, where the flags sit before it.
 */
export function formatListing(d: DeviceListing, layout: ListLayout = '1.8'): string {
  const lines = [
    `dev id ${d.devId}: nr_hw_queues ${d.nrHwQueues} queue_depth ${d.queueDepth} block size ${d.logicalBlockSize} dev_capacity ${d.devSectors}`,
    ...statusLines(d, layout),
    `\tublkc: ${d.ublkc} ublkb: ${d.ublkb} owner: ${d.ownerUid}:${d.ownerGid}`,
    ...d.queues.map(
      (q, i) =>
        `\tqueue ${i}: tid ${q.tid} affinity(${q.affinity.map((cpu) => `${cpu} `).join('')})`,
    ),
  ];
  if (d.target) lines.push(`\ttarget ${sortedJson(d.target)}`);
  return lines.join('\n') + '\n';
}

/** The machine-readable form of `list --json`: one object per device, snake_case like ublksrv. */
export function listingJson(d: DeviceListing): Record<string, unknown> {
  return {
    dev_id: d.devId,
    nr_hw_queues: d.nrHwQueues,
    queue_depth: d.queueDepth,
    block_size: d.logicalBlockSize,
    dev_capacity: d.devSectors,
    max_rq_size: d.maxIoBufBytes,
    daemon_pid: d.daemonPid,
    flags: d.flags,
    flag_names: listFlagNames(d.flags),
    state: d.state,
    ublkc: d.ublkc,
    ublkb: d.ublkb,
    owner: { uid: d.ownerUid, gid: d.ownerGid },
    queues: d.queues.map((q, id) => ({ id, tid: q.tid, affinity: q.affinity })),
    target: d.target ?? null,
  };
}
