/**
 * tsd's expectType, for the type tests: each call compiles only when the value has the type.
 * Nothing here runs; the type tests are only compiled.
 */

/** Compiles when `value` is assignable to T. */
export function expectType<T>(value: T): T {
  return value;
}

/** true when A and B are the same type (`any` is only `any`). */
export type Exact<A, B> =
  (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;

/** Compiles when its argument's type is `true`: `expectTrue<Exact<typeof x, number>>(true)`. */
export function expectTrue<T extends true>(value: T): T {
  return value;
}
