/**
 * A node:test reporter for the kernel suite (used with --test-reporter=<this file>): writes one
 * JSON line when the first test starts, and one with the run's summary (and the kernel release it
 * ran on) at the end, each prefixed with REPORTER_PREFIX. It runs in the test runner's process,
 * next to the tests (in the VM). The human-readable output comes from the spec reporter beside it.
 */
import { release } from 'node:os';

export const REPORTER_PREFIX = 'ublk-kernel-suite-event ';

export interface SuiteSummary {
  /** `uname -r` where the tests ran. */
  kernel: string;
  /** Whether the runner printed its totals (it does at the end of a complete run). */
  complete: boolean;
  tests: number;
  pass: number;
  fail: number;
  cancelled: number;
  skipped: number;
  todo: number;
  /** Names of the tests that were skipped, marked todo, or failed. */
  skippedNames: string[];
  todoNames: string[];
  failedNames: string[];
}

interface TestEventData {
  name?: string;
  file?: string;
  nesting?: number;
  skip?: boolean | string;
  todo?: boolean | string;
  message?: string;
  details?: { type?: string };
}

interface TestEvent {
  type: string;
  data?: TestEventData;
}

export default async function* kernelSuiteReporter(
  source: AsyncIterable<TestEvent>,
): AsyncGenerator<string> {
  const line = (o: object) => REPORTER_PREFIX + JSON.stringify(o) + '\n';
  let started = false;
  const diag = new Map<string, number>();
  const summary: SuiteSummary = {
    kernel: release(),
    complete: false,
    tests: 0,
    pass: 0,
    fail: 0,
    cancelled: 0,
    skipped: 0,
    todo: 0,
    skippedNames: [],
    todoNames: [],
    failedNames: [],
  };
  for await (const ev of source) {
    const d = ev.data ?? {};
    // The runner starts the first test file (it reports each file as a test). The tests inside
    // it may report later than they start: a file whose tests block its event loop (spawnSync)
    // sends its events only when it yields, so the file's start is the reliable moment.
    if (!started && (ev.type === 'test:dequeue' || ev.type === 'test:start')) {
      started = true;
      yield line({ event: 'first-test', name: d.name });
    }
    const label = `${d.name ?? '?'}${d.file ? ` (${d.file})` : ''}`;
    if (ev.type === 'test:pass' && d.skip !== undefined && d.skip !== false) {
      summary.skippedNames.push(label);
    }
    if (ev.type === 'test:pass' && d.todo !== undefined && d.todo !== false) {
      summary.todoNames.push(label);
    }
    if (ev.type === 'test:fail' && d.todo !== undefined && d.todo !== false) {
      summary.todoNames.push(label);
    } else if (ev.type === 'test:fail' && d.details?.type !== 'suite') {
      summary.failedNames.push(label);
    }
    if (ev.type === 'test:diagnostic' && d.nesting === 0 && d.message) {
      const m = /^(\w+) ([\d.]+)$/.exec(d.message);
      if (m) diag.set(m[1], Number(m[2]));
    }
  }
  for (const k of ['tests', 'pass', 'fail', 'cancelled', 'skipped', 'todo'] as const) {
    summary[k] = diag.get(k) ?? NaN;
  }
  summary.complete = diag.has('tests');
  yield line({ event: 'summary', ...summary });
}
