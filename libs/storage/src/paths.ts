import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

/**
 * Storage keys, drawn as the filesystem driver lays them out under STRATA_DATA_DIR/storage:
 *
 *   storage/
 *   ├── blobs/<hex[0:2]>/
 *   │   ├── <hex>.<nonce>                 a blob stored as one file
 *   │   └── <hex>.<nonce>/                a blob stored in parts, hard links to its upload's chunks:
 *   │       └── <offset, 16 digits>         one file per part, named by where it starts
 *   ├── uploads/<id[0:2]>/
 *   │   └── <upload id>.<offset>.<nonce>  one accepted chunk of an upload
 *   └── tmp/<boot>.<pid ns>.<pid>.<nonce>/ partial writes, renamed into place once written; a dead process's
 *                                         directory is removed at the next start or job run (temp-owner.ts)
 *
 * Every key carries a random nonce, so two writers of the same digest or the same upload offset never share a
 * key. The PostgreSQL driver uses the same keys as names of its large objects.
 */
export function nonce(): string {
  return randomBytes(8).toString('hex');
}

export function blobKey(hex: string): string {
  return `blobs/${hex.slice(0, 2)}/${hex}.${nonce()}`;
}

export function chunkKey(uploadId: string, offset: number): string {
  return `uploads/${uploadId.slice(0, 2)}/${uploadId}.${offset}.${nonce()}`;
}

let boot: string | null | undefined;

/**
 * This machine's kernel boot id, which changes at every boot: bytes written but not yet flushed before it changed
 * may be lost. Null where the kernel does not tell (not Linux); writes are then always flushed before they count.
 */
export function bootId(): string | null {
  if (boot === undefined) {
    try {
      boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || null;
    } catch {
      boot = null;
    }
  }
  return boot;
}
