export * from './abi.js';
export { type CqeHandler } from './completion-queue.js';
export { ProvidedBufferRing } from './buf-ring.js';
export { IoBuffer } from './io-buffer.js';
export { Ring, type RingOptions } from './ring.js';
export { SubmissionQueue } from './submission-queue.js';
