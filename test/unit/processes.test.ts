import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import { processExists, processRunning } from '../../src/processes.js';

test('processExists and processRunning: this process is, an exited one is not', async () => {
  assert.ok(processExists(process.pid) && processRunning(process.pid));
  const child = spawn(process.execPath, ['-e', '']);
  await once(child, 'exit');
  assert.equal(processExists(child.pid!), false, 'reaped');
  assert.equal(processRunning(child.pid!), false);
  assert.equal(processExists(0), false);
  assert.equal(processExists(-1), false);
});

test('a zombie still exists as a pid but no longer holds anything', async () => {
  // The child exits at once; its parent sleeps without reaping it (perl-base is in every Debian).
  const parent = spawn('perl', [
    '-e',
    'my $p = fork(); exit 0 unless $p; $| = 1; print "$p\\n"; sleep 5',
  ]);
  const [chunk] = (await once(parent.stdout, 'data')) as [Buffer];
  const zombie = Number(chunk.toString().trim());
  try {
    for (let i = 0; i < 100 && processExists(zombie); i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.equal(processExists(zombie), false);
    assert.ok(existsSync(`/proc/${zombie}`), 'still a pid: a zombie, not reaped');
  } finally {
    parent.kill();
  }
});
