import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { suitePackageRoot } from '../../../scripts/lib/debian-suites.js';

/**
 * Linux 7.3's UAPI include dir (Debian's linux-libc-dev from trixie-backports, unpacked into the
 * VM cache), where `header` must be. Fetching it needs the network once (then the cache:
 * UBLK_VM_CACHE); without it the calling test file fails, saying so: a check that quietly shrank
 * to the system's older headers would pass with every newer number wrong.
 */
export function linux73IncludeDir(header: string): string {
  let root: string;
  try {
    root = suitePackageRoot('linux-libc-dev', '7.3');
  } catch (err) {
    throw new Error(
      `cannot get Linux 7.3's ${header} (linux-libc-dev 7.3 from Debian trixie-backports, by scripts/lib/debian-suites.ts), which this test checks the ABI modules against: ${(err as Error).message}`,
    );
  }
  const dir = join(root, 'usr', 'include');
  if (!existsSync(join(dir, header))) {
    throw new Error(`linux-libc-dev 7.3 unpacked in ${root} has no usr/include/${header}`);
  }
  return dir;
}
