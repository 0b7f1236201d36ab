/** Everything `ublk list` shows about one device, gathered from the kernel and the run dir. */
export interface DeviceListing {
  devId: number;
  nrHwQueues: number;
  queueDepth: number;
  logicalBlockSize: number;
  devSectors: number;
  maxIoBufBytes: number;
  daemonPid: number;
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

/**
 * ublksrv's `list` text, field for field: scripts split these lines on whitespace (pid is field 7
 * of line 2, state field 11, a queue's tid field 4).
 */
export function formatListing(d: DeviceListing): string {
  const lines = [
    `dev id ${d.devId}: nr_hw_queues ${d.nrHwQueues} queue_depth ${d.queueDepth} block size ${d.logicalBlockSize} dev_capacity ${d.devSectors}`,
    `\tmax rq size ${d.maxIoBufBytes} daemon pid ${d.daemonPid} flags 0x${d.flags.toString(16)} state ${d.state}`,
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
    state: d.state,
    ublkc: d.ublkc,
    ublkb: d.ublkb,
    owner: { uid: d.ownerUid, gid: d.ownerGid },
    queues: d.queues.map((q, id) => ({ id, tid: q.tid, affinity: q.affinity })),
    target: d.target ?? null,
  };
}
