/** What one fio run measures, and how the table shows it. */
export interface Workload {
  name: string;
  args: string[];
  /** Report latency percentiles rather than throughput. */
  latency?: boolean;
  /** Two jobs against a two-queue device. */
  twoQueues?: boolean;
}

export const WORKLOADS: Workload[] = [
  { name: '4k randread QD32', args: ['--rw=randread', '--bs=4k', '--iodepth=32'] },
  { name: '4k randwrite QD32', args: ['--rw=randwrite', '--bs=4k', '--iodepth=32'] },
  { name: '4k randread QD1', args: ['--rw=randread', '--bs=4k', '--iodepth=1'], latency: true },
  { name: '64k seqread QD8', args: ['--rw=read', '--bs=64k', '--iodepth=8'] },
  {
    name: '4k randread QD32 x2 jobs, -q 2',
    args: ['--rw=randread', '--bs=4k', '--iodepth=32', '--numjobs=2'],
    twoQueues: true,
  },
];

/** One fio run of one workload on one device, in one round. */
export interface Run {
  device: string;
  /** The kernel device it is compared with, when it is one of ours. */
  baseline?: string;
  /** The C server's device in the same mode, when one ran beside it. */
  peer?: string;
  workload: string;
  round: number;
  iops: number;
  mbps: number;
  /** Completion latency (fio's clat): mean, median and 99th percentile. */
  meanUs?: number;
  p50us?: number;
  p99us?: number;
  /** CPU of the serving daemon, % of one CPU, when there is a daemon. */
  daemonCpu?: number;
}

export interface MemoryReport {
  device: string;
  queues: number;
  rssMiB: number;
  /** How much of the RSS is the per-tag IO buffers the daemon has touched. */
  ioBufferBudgetMiB: number;
  /** One of the pair (one queue, two queues) measured after the same runs, for the per-queue cost. */
  queueStep?: boolean;
}

export interface BenchReport {
  kernel: string;
  quick: boolean;
  runtimeSec: number;
  rounds: number;
  runs: Run[];
  memory: MemoryReport[];
}

/** A device's figures for one workload: medians over the rounds. */
export interface Summary {
  device: string;
  baseline?: string;
  peer?: string;
  workload: string;
  iops: number;
  mbps: number;
  meanUs?: number;
  p50us?: number;
  p99us?: number;
  daemonCpu?: number;
  /**
   * Ours against the baseline: the median over rounds of the ratio within each round (the
   * baseline ran minutes apart otherwise, and the VM's speed drifts). Throughput workloads: our
   * IOPS over the baseline's (higher is better); latency workloads: our mean latency over the
   * baseline's (lower is better), the form the performance targets are stated in.
   */
  ratio?: number;
  /** Against the same-mode C server, paired and oriented like `ratio`. */
  peerRatio?: number;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

const medianOf = (runs: Run[], pick: (r: Run) => number | undefined): number | undefined => {
  const values = runs.map(pick).filter((v): v is number => v !== undefined && !Number.isNaN(v));
  return values.length ? median(values) : undefined;
};

/** The median over rounds of `pick(a) / pick(b)` for the runs of `a` and `b` in one round. */
function pairedRatio(a: Run[], b: Run[], pick: (r: Run) => number | undefined): number | undefined {
  const ratios = a.flatMap((r) => {
    const other = b.find((x) => x.round === r.round);
    const [x, y] = [pick(r), other && pick(other)];
    return x !== undefined && y !== undefined && y > 0 ? [x / y] : [];
  });
  return ratios.length ? median(ratios) : undefined;
}

/** One summary per device and workload, in the order they first ran. */
export function summarize(report: BenchReport): Summary[] {
  const keys = [...new Set(report.runs.map((r) => `${r.workload}\u0000${r.device}`))];
  const runsOf = (workload: string, device: string) =>
    report.runs.filter((r) => r.workload === workload && r.device === device);
  return keys.map((key) => {
    const [workload, device] = key.split('\u0000');
    const runs = runsOf(workload, device);
    const summary: Summary = {
      device,
      baseline: runs[0].baseline,
      peer: runs[0].peer,
      workload,
      iops: medianOf(runs, (r) => r.iops)!,
      mbps: medianOf(runs, (r) => r.mbps)!,
      meanUs: medianOf(runs, (r) => r.meanUs),
      p50us: medianOf(runs, (r) => r.p50us),
      p99us: medianOf(runs, (r) => r.p99us),
      daemonCpu: medianOf(runs, (r) => r.daemonCpu),
    };
    const latency = WORKLOADS.find((w) => w.name === workload)?.latency ?? false;
    const pick = latency ? (r: Run) => r.meanUs : (r: Run) => r.iops;
    if (summary.baseline)
      summary.ratio = pairedRatio(runs, runsOf(workload, summary.baseline), pick);
    if (summary.peer) summary.peerRatio = pairedRatio(runs, runsOf(workload, summary.peer), pick);
    return summary;
  });
}

const fmt = (n: number | undefined, digits = 0) => (n === undefined ? '-' : n.toFixed(digits));

/** The table: one row per device and workload, ours with a ratio to their kernel baseline. */
export function formatTable(report: BenchReport): string {
  const rows = [
    [
      'workload',
      'device',
      'IOPS',
      'MB/s',
      'mean us',
      'p50 us',
      'p99 us',
      'daemon CPU %',
      'vs kernel',
      'vs C, same mode',
    ],
  ];
  for (const s of summarize(report)) {
    const latency = WORKLOADS.find((w) => w.name === s.workload)?.latency ?? false;
    const versus = (ratio: number | undefined, other: string | undefined) =>
      ratio === undefined ? '' : `${latency ? 'latency ' : ''}${ratio.toFixed(2)}x ${other}`;
    rows.push([
      s.workload,
      s.device,
      fmt(s.iops),
      fmt(s.mbps, 1),
      fmt(s.meanUs, 1),
      fmt(s.p50us, 1),
      fmt(s.p99us, 1),
      fmt(s.daemonCpu),
      versus(s.ratio, s.baseline),
      versus(s.peerRatio, s.peer),
    ]);
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const line = (row: string[]) => `| ${row.map((cell, c) => cell.padEnd(widths[c])).join(' | ')} |`;
  const table = [line(rows[0]), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`];
  for (const row of rows.slice(1)) table.push(line(row));
  const memory = report.memory.map(
    (m) =>
      `| ${m.device} | ${m.queues} | ${m.rssMiB.toFixed(1)} | ${m.ioBufferBudgetMiB.toFixed(1)} | ${(m.rssMiB - m.ioBufferBudgetMiB).toFixed(1)} |`,
  );
  const one = report.memory.find((m) => m.queueStep && m.queues === 1);
  const two = report.memory.find((m) => m.queueStep && m.queues === 2);
  const perQueue =
    one && two
      ? [
          `Each queue beyond the first: ${(two.rssMiB - two.ioBufferBudgetMiB - (one.rssMiB - one.ioBufferBudgetMiB)).toFixed(1)} MiB (${two.device} minus ${one.device}, after the same runs, beyond IO buffers).`,
          '',
        ]
      : [];
  return [
    `Linux ${report.kernel}, fio io_uring direct, ${report.runtimeSec} s per run, ${report.rounds} round${report.rounds === 1 ? '' : 's'}` +
      `${report.quick ? ' (quick)' : ''}, no I/O scheduler on any device: medians, ratios paired within each round`,
    '',
    ...table,
    '',
    '| daemon | queues | RSS MiB | of which IO buffers MiB | beyond IO buffers MiB |',
    '|---|---|---|---|---|',
    ...memory,
    '',
    ...perQueue,
  ].join('\n');
}
