import { constants } from 'node:os';

/**
 * Every error this package throws on purpose, and the stable `code` each carries (match on the
 * code, never on the message):
 *
 * | code                      | error                    | meaning                                           |
 * | ------------------------- | ------------------------ | ------------------------------------------------- |
 * | `UBLK_ERR_USER`           | {@link UserError}        | the user caused it and can fix it (a bad option)  |
 * | `UBLK_ERR_INVALID_TARGET` | {@link UserError}        | a target module breaks the target API's contract  |
 * | an errno name (`ENOENT`)  | {@link ErrnoError}       | a system call or io_uring operation failed        |
 * | an errno name (`EEXIST`)  | ControlError             | the kernel refused a ublk control command         |
 *
 * An errno is always positive in these errors, as in C; a negative io_uring result becomes one
 * through {@link checkResult}. Node's own errors (fs) carry a negative `errno` and the same `code`:
 * {@link isErrnoError} recognises both.
 */
export const ERROR_CODES = {
  USER: 'UBLK_ERR_USER',
  INVALID_TARGET: 'UBLK_ERR_INVALID_TARGET',
} as const;

export type UserErrorCode = (typeof ERROR_CODES)[keyof typeof ERROR_CODES];

/** The one errno-number-to-name table: os.constants.errno reversed. */
const ERRNO_NAMES = new Map(Object.entries(constants.errno).map(([name, errno]) => [errno, name]));

/** 'ENOENT' for 2; `errno N` for a number this platform has no name for. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

/**
 * Recognised by a brand rather than by class identity, so that a target module importing its
 * own copy of this package (another node_modules) still has its UserErrors shown as one line.
 */
const USER_ERROR_BRAND = Symbol.for('ublk-ts.UserError');

/**
 * A failure the user caused and can fix (bad flag, missing file, busy id, not root...). The CLI
 * prints its message as one line and exits non-zero; anything else is a bug and keeps its stack.
 */
export class UserError extends Error {
  override name = 'UserError';
  readonly code: UserErrorCode;
  readonly [USER_ERROR_BRAND] = true;

  constructor(message: string, options?: { code?: UserErrorCode; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = options?.code ?? ERROR_CODES.USER;
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return isUserError(value);
  }
}

export function isUserError(value: unknown): value is UserError {
  return (
    typeof value === 'object' &&
    value !== null &&
    (value as { [USER_ERROR_BRAND]?: unknown })[USER_ERROR_BRAND] === true
  );
}

/** Where an errno error happened, as far as the caller knows. */
export interface ErrnoContext {
  devId?: number;
  queueId?: number;
  tag?: number;
}

/** A failed system call, io_uring operation or kernel command. */
export interface ErrnoError extends Error, ErrnoContext {
  /** The errno name ('ENOENT'). */
  readonly code: string;
  /** Positive, as in C. */
  readonly errno: number;
  /** The system call or operation ('io_uring_enter', 'fdatasync'). */
  readonly syscall: string;
}

/** The error of a failed operation, with the native side's message shape ("open: ENOENT"). */
export function errnoError(syscall: string, errno: number, context: ErrnoContext = {}): ErrnoError {
  if (!Number.isInteger(errno) || errno <= 0) {
    throw new RangeError(`errnoError(${syscall}): errno must be positive, not ${errno}`);
  }
  const code = errnoName(errno);
  const where = [
    context.devId === undefined ? '' : `device ${context.devId}`,
    context.queueId === undefined ? '' : `queue ${context.queueId}`,
    context.tag === undefined ? '' : `tag ${context.tag}`,
  ]
    .filter(Boolean)
    .join(' ');
  const message = `${syscall}: ${code}${where ? ` (${where})` : ''}`;
  return Object.assign(new Error(message), { code, errno, syscall, ...context });
}

/** An io_uring or hot-path result: itself when it is not negative, else its ErrnoError thrown. */
export function checkResult(res: number, syscall: string, context?: ErrnoContext): number {
  if (res < 0) throw errnoError(syscall, -res, context);
  return res;
}

/** Ours or Node's (whose errno is negative), optionally with a given code. */
export function isErrnoError(error: unknown, code?: string): error is ErrnoError {
  if (!(error instanceof Error)) return false;
  const { errno, code: actual } = error as Partial<ErrnoError>;
  return typeof errno === 'number' && typeof actual === 'string' && (!code || actual === code);
}
