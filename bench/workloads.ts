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

export interface Result {
  device: string;
  /** The kernel device it is compared with, when it is one of ours. */
  baseline?: string;
  workload: string;
  iops: number;
  mbps: number;
  p50us?: number;
  p99us?: number;
  /** CPU of the serving daemon, % of one CPU, when there is a daemon. */
  daemonCpu?: number;
}

export interface MemoryReport {
  device: string;
  queues: number;
  rssMiB: number;
  /** RSS minus the per-tag IO buffers the daemon has touched (RssAnon of its buffer mappings). */
  ioBufferBudgetMiB: number;
}

export interface BenchReport {
  kernel: string;
  quick: boolean;
  runtimeSec: number;
  results: Result[];
  memory: MemoryReport[];
}

const fmt = (n: number | undefined, digits = 0) => (n === undefined ? '-' : n.toFixed(digits));

/** The table: one row per device and workload, ours with a ratio to their kernel baseline. */
export function formatTable(report: BenchReport): string {
  const rows = [
    ['workload', 'device', 'IOPS', 'MB/s', 'p50 us', 'p99 us', 'daemon CPU %', 'ratio'],
  ];
  for (const r of report.results) {
    const base = report.results.find((b) => b.device === r.baseline && b.workload === r.workload);
    const latency = WORKLOADS.find((w) => w.name === r.workload)?.latency;
    // Throughput: ours / theirs. Latency: theirs / ours, so that higher is better in both.
    const ratio = !base
      ? ''
      : latency && r.p50us && base.p50us
        ? `${(base.p50us / r.p50us).toFixed(2)}x ${base.device} p50`
        : `${(r.iops / base.iops).toFixed(2)}x ${base.device}`;
    rows.push([
      r.workload,
      r.device,
      fmt(r.iops),
      fmt(r.mbps, 1),
      fmt(r.p50us, 1),
      fmt(r.p99us, 1),
      fmt(r.daemonCpu),
      ratio,
    ]);
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const line = (row: string[]) => `| ${row.map((cell, c) => cell.padEnd(widths[c])).join(' | ')} |`;
  const table = [line(rows[0]), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`];
  for (const row of rows.slice(1)) table.push(line(row));
  const memory = report.memory.map(
    (m) =>
      `| ${m.device} | ${m.queues} | ${m.rssMiB.toFixed(1)} | ${m.ioBufferBudgetMiB.toFixed(1)} |`,
  );
  return [
    `Linux ${report.kernel}, fio io_uring direct, ${report.runtimeSec} s per run${report.quick ? ' (quick)' : ''}`,
    '',
    ...table,
    '',
    '| daemon | queues | RSS MiB | of which IO buffers MiB |',
    '|---|---|---|---|',
    ...memory,
    '',
  ].join('\n');
}
