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

/** A native digester whose state can be forked in this process (never saved: see ResumableSha256). */
export interface ForkableDigester extends Digester {
  /** An independent digester in the same state: feeding one does not change the other. */
  fork(): ForkableDigester;
}

function wrap(h: Hash): ForkableDigester {
  return {
    update: (chunk) => void h.update(chunk),
    hex: () => h.digest('hex'),
    fork: () => wrap(h.copy()),
  };
}

/** Node's native hash: about six times faster than WebAssembly here, but its state cannot be saved. */
export function nativeDigester(algorithm: Algorithm = 'sha256'): ForkableDigester {
  return wrap(createHash(algorithm));
}

/**
 * The native SHA-256 of the uploads this process appended to last, each at the offset it covers, so that a next
 * chunk arriving here is hashed as it streams in. Bounded: the least recently used are forgotten, and an upload
 * whose hasher is gone (or that moved on through another replica) is caught up from its saved state instead.
 */
export class NativeHashCache {
  private readonly entries = new Map<string, { offset: number; digester: ForkableDigester }>();

  constructor(private readonly capacity = 1024) {}

  /** A fork of the upload's hasher if it covers exactly [0, offset); the cached one stays as it was. */
  forkAt(id: string, offset: number): ForkableDigester | null {
    const entry = this.entries.get(id);
    if (!entry) return null;
    if (entry.offset !== offset) {
      this.entries.delete(id);
      return null;
    }
    return entry.digester.fork();
  }

  set(id: string, offset: number, digester: ForkableDigester): void {
    this.entries.delete(id);
    this.entries.set(id, { offset, digester });
    if (this.entries.size > this.capacity) {
      const oldest = this.entries.keys().next();
      if (!oldest.done) this.entries.delete(oldest.value);
    }
  }

  delete(id: string): void {
    this.entries.delete(id);
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

/** Passes `source` through, feeding every chunk to `digester` on the way. */
export async function* tap(source: AsyncIterable<Buffer>, digester: Digester): AsyncGenerator<Buffer> {
  for await (const chunk of source) {
    digester.update(chunk);
    yield chunk;
  }
}
