/**
 * The user_data of every SQE a queue thread prepares on its ring, and so of every CQE it drains:
 * what the completion is of (its kind) and which tag, slot or command (its index). This module is
 * the only one that knows the layout; everything that prepares or completes ring IO goes through
 * encodeUserData / userDataKind / userDataIndex.
 *
 * Layout: kind × 2^27 + index, every index below 2^27 and every kind below 16, so that a user_data
 * is below 2^31: a small integer (a Smi) that V8 never boxes, no BigInt, and decoding is a shift
 * and a mask, in any order of kinds. Tag commands are kind 0: their user_data is the tag.
 */

/** A tag's ublk command (FETCH_REQ, COMMIT_AND_FETCH_REQ, NEED_GET_DATA); index: the tag. */
export const UD_TAG_COMMAND = 0;
/** A target's ctx.io call (Queue.io); index: its slot. */
export const UD_TARGET_IO = 1;
/** A forwarded request's ring IO (forwarded-io.ts); index: the tag. */
export const UD_FORWARDED_IO = 2;
/** Manual zero copy: a forwarded request's REGISTER_IO_BUF; index: the tag. */
export const UD_REGISTER_IO_BUF = 3;
/** Manual zero copy: a forwarded request's UNREGISTER_IO_BUF; index: the tag. */
export const UD_UNREGISTER_IO_BUF = 4;
/** A request hook's delay, a TIMEOUT (request-hooks.ts); index: the tag. */
export const UD_HOOK_DELAY = 5;
/** A commit linked behind a forwarded request's IO (tag-states.ts); index: the tag. */
export const UD_LINKED_COMMIT = 6;
/** Batch IO: a PREP_IO_CMDS or COMMIT_IO_CMDS (batch-io.ts); index: its element buffer. */
export const UD_BATCH_COMMAND = 7;
/** Batch IO: a multishot FETCH_IO_CMDS (batch-io.ts); index: which fetch command. */
export const UD_BATCH_FETCH = 8;

export type UserDataKind =
  | typeof UD_TAG_COMMAND
  | typeof UD_TARGET_IO
  | typeof UD_FORWARDED_IO
  | typeof UD_REGISTER_IO_BUF
  | typeof UD_UNREGISTER_IO_BUF
  | typeof UD_HOOK_DELAY
  | typeof UD_LINKED_COMMIT
  | typeof UD_BATCH_COMMAND
  | typeof UD_BATCH_FETCH;

const INDEX_BITS = 27;
const INDEX_SCALE = 2 ** INDEX_BITS;
const INDEX_MASK = INDEX_SCALE - 1;
/** A ublk tag is a u16 (struct ublksrv_io_desc's tag field and the kernel's queue depth cap). */
const TAG_LIMIT = 2 ** 16;

/** Per kind, the first index it refuses (its indexes run from 0 below it). */
export const USER_DATA_INDEX_LIMIT: readonly number[] = [
  TAG_LIMIT, // UD_TAG_COMMAND
  INDEX_SCALE, // UD_TARGET_IO: far more ctx.io calls than could ever be in flight
  TAG_LIMIT, // UD_FORWARDED_IO
  TAG_LIMIT, // UD_REGISTER_IO_BUF
  TAG_LIMIT, // UD_UNREGISTER_IO_BUF
  TAG_LIMIT, // UD_HOOK_DELAY
  TAG_LIMIT, // UD_LINKED_COMMIT
  TAG_LIMIT, // UD_BATCH_COMMAND
  TAG_LIMIT, // UD_BATCH_FETCH
];

/** The number of kinds: userDataKind returns one below it for every user_data encoded here. */
export const USER_DATA_KINDS = USER_DATA_INDEX_LIMIT.length;

/** The lowest and the highest user_data of a kind. */
export function userDataRange(kind: UserDataKind): { first: number; last: number } {
  return { first: kind * INDEX_SCALE, last: kind * INDEX_SCALE + USER_DATA_INDEX_LIMIT[kind] - 1 };
}

/** The user_data of `index` of `kind`; a RangeError for an index the kind has no room for. */
export function encodeUserData(kind: UserDataKind, index: number): number {
  // `>>> 0` keeps only an integer from 0 to 2^32 - 1 as it is; an unknown kind has no limit.
  if (index >>> 0 !== index || !(index < USER_DATA_INDEX_LIMIT[kind])) {
    throw new RangeError(`user_data index ${index} out of range for kind ${kind}`);
  }
  return kind * INDEX_SCALE + index;
}

/**
 * The kind of a CQE's user_data: one of the UD_ constants for what this module encoded; for
 * anything else below 2^32, USER_DATA_KINDS or more, which the caller refuses. (The queue's ring
 * carries no other user_data.)
 */
export function userDataKind(userData: number): number {
  return userData >>> INDEX_BITS;
}

/** The index of a CQE's user_data (a tag, a slot...), as userDataKind tells of what. */
export function userDataIndex(userData: number): number {
  return userData & INDEX_MASK;
}
