import { releaseIdleDirectBuffers } from './direct-io';
import { collectWhenQuiet } from './reclaim';

/**
 * The storage's memory tuning, installed by the registry's start-up (nothing happens on import): collections of
 * the short-lived buffers bodies stream through, and after each burst the idle direct-I/O buffers handed back and a
 * full collection. Returns a function that stops it.
 */
export function startReclaim(): () => void {
  return collectWhenQuiet(releaseIdleDirectBuffers);
}
