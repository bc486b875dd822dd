import { readlinkSync } from 'node:fs';
import { bootId } from './paths';

/**
 * Temp directories are named `<boot id>.<pid namespace>.<pid>.<nonce>`, so a process can tell whether another's
 * directory belongs to a process it can see: one under the same kernel boot and in the same pid namespace, whose
 * pid it can ask the kernel about. Processes in other containers or on other hosts are 'unknown'.
 */
function pidNamespace(): string | null {
  try {
    // `pid:[4026531836]`: the namespace's inode.
    return /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1] ?? null;
  } catch {
    return null;
  }
}

const self = { boot: bootId(), ns: pidNamespace() };

export function tempDirName(nonce: string): string {
  return `${self.boot ?? 'unknown'}.${self.ns ?? 'unknown'}.${process.pid}.${nonce}`;
}

const NAME_RE = /^([0-9a-f-]+)\.(\d+)\.(\d+)\.[0-9a-f]+$/;

/** Whether the process that made the temp directory `name` still runs, as far as this process can see. */
export function tempDirOwner(name: string): 'alive' | 'dead' | 'unknown' {
  const m = NAME_RE.exec(name);
  if (!m || self.boot === null || self.ns === null || m[1] !== self.boot || m[2] !== self.ns)
    return 'unknown';
  try {
    process.kill(Number(m[3]), 0);
    return 'alive';
  } catch (e) {
    // EPERM: a process of another user holds that pid, so it is not ours to judge.
    return (e as NodeJS.ErrnoException).code === 'ESRCH' ? 'dead' : 'alive';
  }
}
