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
