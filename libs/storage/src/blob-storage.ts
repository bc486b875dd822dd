import type { Readable } from 'node:stream';
import type { Tx } from '@strata/db';

export interface ByteRange {
  /** First byte, inclusive. */
  readonly start: number;
  /** Last byte, inclusive. */
  readonly end: number;
}

export interface WriteOptions {
  /** False: resolve once the bytes are written, before they are flushed to disk. Default true. */
  readonly durable?: boolean;
  /**
   * Where the object's first byte sits in the blob it is part of (a chunk of an upload), 0 for a whole blob. A
   * hint for caching: drivers may keep the head of every blob in memory and stream the rest past it.
   */
  readonly blobOffset?: number;
}

/** Random access to one object's bytes, for a sender that brings its own buffers. */
export interface ObjectReader {
  readonly size: number;
  /**
   * Optional: the read size this reader serves best (a sender reads ahead in pieces of it, holding a fixed number
   * of bytes, so a smaller piece means more reads under way at once).
   */
  readonly pieceSize?: number;
  /** Reads up to `length` bytes at `position` into the start of `buffer`; resolves with the count, 0 past the end. */
  read(buffer: Buffer, length: number, position: number): Promise<number>;
  close(): Promise<void>;
}

/**
 * Where blob bytes live. Objects are immutable and addressed by keys the caller makes unique: a key is
 * written once and never reused, so deleting one copy can never remove another writer's bytes.
 */
export interface BlobStorage {
  readonly driver: 'filesystem' | 'postgres';

  /** Prepares the store (directories, tables); safe to call at every start. */
  init(): Promise<void>;

  /**
   * Streams `source` into a new object at `key` and resolves with its size once every byte is durable, or with
   * `{ durable: false }` once every byte is written, the flush to disk going on in the background (`sync` waits
   * for it). If `source` fails, nothing is left at `key` and the error propagates.
   */
  write(key: string, source: AsyncIterable<Buffer>, options?: WriteOptions): Promise<number>;

  /**
   * Makes the objects at `keys` durable, whoever wrote them: flushes their bytes and names to disk. Rejects when
   * one is missing (code ENOENT) or when its flush failed.
   */
  sync(keys: readonly string[]): Promise<void>;

  /**
   * For a write asked for with `durable: false`: what to record beside it so that a later reader can tell whether
   * its bytes may have been lost since (this machine's boot id), or null when this store makes every write
   * durable anyway (then nothing is ever left to flush).
   */
  unsyncedMark(): string | null;

  /**
   * Makes a new object at `key` whose bytes are `parts` concatenated in order, durable on return. The parts are
   * left as they are. Drivers that keep bytes in the database do it inside `tx`, so the object becomes visible
   * with the rows that commit with it.
   */
  compose(key: string, parts: readonly string[], tx?: Tx): Promise<void>;

  /**
   * Composes `parts` (none: an empty object) at `key` and runs `publish`, which commits the rows that name the new
   * object, so that no row can name it before it is whole and durable: a store whose bytes live outside the
   * database composes first and then publishes; one whose bytes live in it composes inside the transaction it
   * hands to `publish`. Resolves with what `publish` returned. The caller removes the object if `publish` fails
   * without having committed.
   */
  composeThen<T>(key: string, parts: readonly string[], publish: (tx?: Tx) => Promise<T>): Promise<T>;

  /** Streams the object, or the inclusive `range` of it. Rejects with code ENOENT when there is no object. */
  read(key: string, range?: ByteRange): Promise<Readable>;

  /**
   * Optional: opens the object for positional reads (see `ObjectReader`). Rejects with code ENOENT when there is no
   * object. Drivers without it are read through `read`.
   */
  openReader?(key: string): Promise<ObjectReader>;

  /** The object's size, or null when there is none. */
  size(key: string): Promise<number | null>;

  /** Removes the object; removing a missing one is not an error. */
  delete(key: string): Promise<void>;

  /**
   * Optional: removes what writers that died left behind (partial writes of a crashed process), never what a
   * live writer, on this host or another, still has under way. Resolves with how many leftovers it removed.
   */
  removeLeftovers?(): Promise<number>;

  /**
   * Optional: reclaims the space of bytes nothing refers to any more, for drivers whose store does not do that by
   * itself (large objects: orphans, writes abandoned by a dead process, dead tuples). Never touches a write still
   * under way, on this replica or another. Run by one replica at a time.
   */
  maintain?(): Promise<MaintenanceReport>;

  /** Throws when the store cannot accept writes (readiness). */
  check(): Promise<void>;
}

/** What one `maintain` run reclaimed. */
export interface MaintenanceReport {
  /** Objects whose write stopped long ago without completing (their writer died), removed with their bytes. */
  readonly abandonedWrites: number;
  /** Stored byte runs that nothing names, removed. */
  readonly orphans: number;
  /** Tables vacuumed because their dead rows warranted it. */
  readonly vacuumed: readonly string[];
  /** Tables that needed a vacuum this process may not run (not their owner): an operator's to vacuum. */
  readonly refused: readonly string[];
}

export class StorageKeyError extends Error {
  constructor(key: string) {
    super(`invalid storage key ${JSON.stringify(key)}`);
  }
}

/** Keys are made by the registry from digests and ids it has validated; this is the last line anyway. */
const KEY_RE = /^(blobs|uploads)\/[0-9a-f]{2}\/[0-9a-f][0-9a-f.-]{8,200}$/;

export function assertKey(key: string): string {
  if (!KEY_RE.test(key) || key.includes('..')) throw new StorageKeyError(key);
  return key;
}
