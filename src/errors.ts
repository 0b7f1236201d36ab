/**
 * A failure the user caused and can fix (bad flag, missing file, busy id, not root...). The CLI
 * prints its message as one line and exits non-zero; anything else is a bug and keeps its stack.
 */
export class UserError extends Error {
  override name = 'UserError';
}

export function isErrnoCode(err: unknown, code: string): boolean {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === code;
}
