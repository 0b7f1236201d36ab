// 64-bit ring fields as two native-endian u32 words, so that integers up to 2^53 round-trip
// without BigInt. Negative values (-1 for "current file position") come out as two's complement.

const TWO_POW_32 = 0x1_0000_0000;

if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) {
  throw new Error('io_uring u64 fields are written as little-endian word pairs');
}

export function writeU64(words: Uint32Array, index: number, value: number): void {
  words[index] = value >>> 0;
  words[index + 1] = Math.floor(value / TWO_POW_32);
}

export function readU64(words: Uint32Array, index: number): number {
  return words[index] + words[index + 1] * TWO_POW_32;
}
