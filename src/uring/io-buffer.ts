import { mmap, munmap, type Mapping } from '../sys.js';

/** Page-aligned memory outside the JS heap for READ/WRITE SQEs (O_DIRECT-friendly). */
export class IoBuffer {
  readonly bytes: Uint8Array;
  readonly address: number;
  private readonly mapping: Mapping;

  private constructor(mapping: Mapping) {
    this.mapping = mapping;
    this.bytes = new Uint8Array(mapping.buffer);
    this.address = mapping.address;
  }

  static allocate(length: number): IoBuffer {
    return new IoBuffer(mmap(-1, 0, length, true));
  }

  /** Unmaps the memory; `bytes` becomes empty. Repeated calls do nothing. */
  free(): void {
    munmap(this.mapping.buffer);
  }
}
