import { startReclaim } from '@strata/storage';

/**
 * The process-wide tuning the registry is measured with, installed explicitly by `serve` before anything else
 * runs (the V8 flags themselves are bin/strata's):
 * - libuv's thread pool: 16 threads, not 4. File writes, fsyncs and renames of concurrent uploads all queue there;
 *   with 4, 32 clients wait on each other's fsyncs. libuv sizes the pool on its first use, so this must run before
 *   any asynchronous file, DNS or crypto call. An operator's own UV_THREADPOOL_SIZE wins.
 * - the storage's collections of streamed buffers and idle direct-I/O buffers (`startReclaim`).
 */
export function installTuning(): void {
  process.env.UV_THREADPOOL_SIZE ??= '16';
  startReclaim();
}
