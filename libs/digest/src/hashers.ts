import { createHash, type Hash } from 'node:crypto';
import { createSHA256, type IHasher } from 'hash-wasm';

export type Algorithm = 'sha256' | 'sha512';

/** Bytes of SHA-256 state that hash-wasm's `save()` produces; anything else is not a state of ours. */
export const SHA256_STATE_BYTES = 116;

/** Something that takes bytes and, at the end, gives a hex digest. */
export interface Digester {
  update(chunk: Uint8Array): void;
  hex(): string;
}

/** Node's native hash: about six times faster than WebAssembly here, but its state cannot be saved. */
export function nativeDigester(algorithm: Algorithm = 'sha256'): Digester {
  const h: Hash = createHash(algorithm);
  return {
    update: (chunk) => void h.update(chunk),
    hex: () => h.digest('hex'),
  };
}

/** What `NativeHashCache` keeps: a hash that can be forked, and must be dropped when forgotten. */
export interface Forkable<T> {
  /** False once it can no longer be forked (its worker is gone). */
  readonly alive: boolean;
  fork(): T;
  drop(): void;
}

/**
 * The native hash of the uploads this process appended to last, each at the offset it covers, so that a next
 * chunk arriving here is hashed as it streams in. Bounded in number and in age: the least recently used are
 * forgotten, and an upload whose hash is gone (or that moved on through another replica) is caught up from its
 * saved state instead.
 */
export class NativeHashCache<T extends Forkable<T>> {
  private readonly entries = new Map<string, { offset: number; hash: T; at: number }>();

  constructor(
    private readonly capacity = 1024,
    private readonly maxAgeMs = 15 * 60_000,
  ) {}

  /** A fork of the upload's hash if it covers exactly [0, offset); the cached one stays as it was. */
  forkAt(id: string, offset: number): T | null {
    const entry = this.entries.get(id);
    if (!entry) return null;
    if (entry.offset !== offset || !entry.hash.alive) {
      this.delete(id);
      return null;
    }
    return entry.hash.fork();
  }

  set(id: string, offset: number, hash: T, now = Date.now()): void {
    this.delete(id);
    this.entries.set(id, { offset, hash, at: now });
    this.sweep(now);
  }

  /** Forgets the entries beyond capacity or older than the age limit. */
  sweep(now = Date.now()): void {
    // Insertion order is age order: drop from the front while too many or too old.
    for (const [key, entry] of this.entries) {
      if (this.entries.size <= this.capacity && now - entry.at <= this.maxAgeMs) break;
      this.delete(key);
    }
  }

  delete(id: string): void {
    const entry = this.entries.get(id);
    if (!entry) return;
    this.entries.delete(id);
    entry.hash.drop();
  }

  clear(): void {
    for (const id of [...this.entries.keys()]) this.delete(id);
  }

  get size(): number {
    return this.entries.size;
  }
}

/**
 * A SHA-256 whose state can be saved into a database row and continued on any replica: hash-wasm, loaded
 * from `state` when given.
 */
export class ResumableSha256 implements Digester {
  private constructor(private readonly hasher: IHasher) {}

  static async create(state?: Uint8Array | null): Promise<ResumableSha256> {
    const hasher = await createSHA256();
    hasher.init();
    if (state) {
      if (state.length !== SHA256_STATE_BYTES) throw new Error(`bad SHA-256 state of ${state.length} bytes`);
      hasher.load(state);
    }
    return new ResumableSha256(hasher);
  }

  update(chunk: Uint8Array): void {
    this.hasher.update(chunk);
  }

  save(): Buffer {
    return Buffer.from(this.hasher.save());
  }

  hex(): string {
    return this.hasher.digest('hex');
  }
}
