import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

// This file runs as dist/test/unit/support/linux73-headers.js; the headers stay in the sources.
const INCLUDE = fileURLToPath(
  new URL('../../../../test/unit/support/linux-7.3/include', import.meta.url),
);

/**
 * Linux 7.3's UAPI include dir: the few headers the ABI tests compile against, vendored from
 * Debian's linux-libc-dev (linux-7.3/README.md says which), so the unit suite needs no network.
 * The rest (<linux/types.h>, <linux/ioctl.h>...) come from the system's, after these.
 */
export function linux73IncludeDir(header: string): string {
  if (!existsSync(join(INCLUDE, header))) {
    throw new Error(`${header} is not among Linux 7.3's headers vendored in ${INCLUDE}`);
  }
  return INCLUDE;
}
