import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** `-I` options that search `dirs` before the system's include path. */
export function includeFlags(dirs: readonly string[]): string[] {
  return dirs.flatMap((dir) => ['-I', dir]);
}

/**
 * Evaluates C integer expressions (sizeof, offsetof, macros) against real headers by compiling and
 * running a tiny program, so TS definitions are checked against the C truth rather than against a
 * copy of it. `includeDirs` come before the system's headers (another kernel's UAPI headers).
 */
export function evalCExpressions(
  includes: readonly string[],
  exprs: Readonly<Record<string, string>>,
  includeDirs: readonly string[] = [],
): Map<string, bigint> {
  const dir = mkdtempSync(join(tmpdir(), 'cheader-'));
  try {
    const lines = Object.entries(exprs).map(
      ([name, expr]) => `  printf("%s %lld\\n", ${JSON.stringify(name)}, (long long)(${expr}));`,
    );
    const source = [
      '#include <stdio.h>',
      '#include <stddef.h>',
      ...includes.map((h) => `#include <${h}>`),
      'int main(void) {',
      ...lines,
      '  return 0;',
      '}',
    ].join('\n');
    writeFileSync(join(dir, 'probe.c'), source);
    execFileSync(
      'cc',
      [...includeFlags(includeDirs), '-o', join(dir, 'probe'), join(dir, 'probe.c')],
      { stdio: 'pipe' },
    );
    const out = execFileSync(join(dir, 'probe'), { encoding: 'utf8' });
    const values = new Map<string, bigint>();
    for (const line of out.trim().split('\n')) {
      const [name, value] = line.split(' ');
      values.set(name, BigInt(value));
    }
    return values;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
