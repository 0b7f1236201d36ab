import { writeFileSync } from 'node:fs';
import { UserError } from '../../errors.js';

/** What devices get unless told otherwise. */
const DEFAULT_IO_SCHEDULER = 'none';

/**
 * Selects the block layer's I/O scheduler of a started device (its disk exists from START_DEV on).
 *
 * The kernel gives a single-queue ublk device mq-deadline, which in front of a server that does
 * its own queueing only adds work per request, and a kblockd hop on io_uring submissions (see
 * docs/performance.md#decisions, "No I/O scheduler"). Loop devices get 'none' by default for the
 * same reason. The default is best effort (a missing sysfs only costs speed); a scheduler asked
 * for by name must be set.
 */
export function setIoScheduler(devId: number, name: string | undefined): void {
  const path = `/sys/block/ublkb${devId}/queue/scheduler`;
  try {
    writeFileSync(path, name ?? DEFAULT_IO_SCHEDULER);
  } catch (err) {
    if (name === undefined) return;
    throw new UserError(
      `cannot select I/O scheduler '${name}' for /dev/ublkb${devId}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message} (see ${path} for the choices)`,
    );
  }
}
