import { UserError } from '../../errors.js';
import { SECTOR, type Capabilities } from '../target/contract.js';
import { UBLK_ATTR, type UblkParamsInput } from '../ublk-cmd.js';

/** The kernel's limits are u32 sector counts. */
const MAX_SECTORS_U32 = 0xffff_ffff;

function log2Exact(n: number, what: string): number {
  const shift = Math.log2(n);
  if (!Number.isInteger(shift)) throw new UserError(`${what} ${n} is not a power of two`);
  return shift;
}

/**
 * ublk parameters from what a target declares, checked the way the kernel will check them so a
 * mistake is reported in words rather than as SET_PARAMS' -EINVAL.
 */
export function paramsFor(
  size: number,
  caps: Capabilities,
  maxIoBufBytes: number,
  pageSize: number,
): UblkParamsInput {
  const logical = caps.logicalBlockSize ?? SECTOR;
  const physical = caps.physicalBlockSize ?? logical;
  const logicalShift = log2Exact(logical, 'logical block size');
  const physicalShift = log2Exact(physical, 'physical block size');
  if (logical < SECTOR || logical > pageSize) {
    throw new UserError(`logical block size ${logical} must be from 512 to ${pageSize}`);
  }
  if (physical < logical) {
    throw new UserError(`physical block size ${physical} is below the logical ${logical}`);
  }
  if (!Number.isSafeInteger(size) || size <= 0 || size % logical !== 0) {
    throw new UserError(
      `device size ${size} must be a positive multiple of the block size (${logical})`,
    );
  }
  const maxIo = Math.min(caps.maxIoBytes ?? maxIoBufBytes, maxIoBufBytes);
  const attrs =
    (caps.readOnly ? UBLK_ATTR.READ_ONLY : 0) |
    (caps.rotational ? UBLK_ATTR.ROTATIONAL : 0) |
    (caps.volatileCache ? UBLK_ATTR.VOLATILE_CACHE : 0) |
    (caps.fua ? UBLK_ATTR.FUA : 0);
  const params: UblkParamsInput = {
    basic: {
      attrs,
      logicalBsShift: logicalShift,
      physicalBsShift: physicalShift,
      ioMinShift: logicalShift,
      ioOptShift: physicalShift,
      maxSectors: Math.floor(maxIo / SECTOR),
      devSectors: size / SECTOR,
    },
  };
  if (caps.discard || caps.writeZeroes) {
    const discard = typeof caps.discard === 'object' ? caps.discard : {};
    const zeroes = typeof caps.writeZeroes === 'object' ? caps.writeZeroes : {};
    const sectors = (bytes: number | undefined) =>
      Math.min(Math.floor((bytes ?? Infinity) / SECTOR), MAX_SECTORS_U32);
    params.discard = {
      discardAlignment: discard.alignment ?? 0,
      // The kernel insists on a granularity even for write-zeroes alone.
      discardGranularity: discard.granularity ?? physical,
      maxDiscardSectors: caps.discard ? sectors(discard.maxBytes) : 0,
      maxWriteZeroesSectors: caps.writeZeroes ? sectors(zeroes.maxBytes) : 0,
      maxDiscardSegments: 1,
    };
  }
  return params;
}
