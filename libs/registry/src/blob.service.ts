import { Readable } from 'node:stream';
import type { RequestMeta } from '@strata/events';
import { assertName, parseDigest, RegistryError } from '@strata/oci';
import type { BlobStorage, ByteRange, ObjectReader } from '@strata/storage';
import type { BlobStore } from './stores/blob.store';
import type { RepositoryStore } from './stores/repository.store';

export interface BlobInfo {
  readonly digest: string;
  readonly size: number;
  /** Where the bytes are stored; null for a small blob kept in its row. */
  readonly storageKey: string | null;
}

/** Reads and links of blobs that are already stored. Reads touch projections only. */
export class BlobService {
  constructor(
    private readonly blobs: BlobStore,
    private readonly storage: BlobStorage,
    private readonly repositories: RepositoryStore,
  ) {}

  /** The blob as linked in `repository`; BLOB_UNKNOWN when it is not, even if another repository has it. */
  async stat(repository: string, digest: string): Promise<BlobInfo> {
    parseDigest(digest);
    const repositoryId = await this.repositories.find(repository);
    if (repositoryId === null) throw new RegistryError('BLOB_UNKNOWN', { digest });
    const row = await this.blobs.linked(repositoryId, digest);
    if (!row) throw new RegistryError('BLOB_UNKNOWN', { digest });
    return { digest, size: row.size, storageKey: row.storage_key };
  }

  /**
   * The blob's bytes for positional reads, when its storage offers them (a stored file); null otherwise, and the
   * caller streams `open` instead.
   */
  async openReader(blob: BlobInfo): Promise<ObjectReader | null> {
    if (blob.storageKey === null || !this.storage.openReader) return null;
    const reader = await this.storage.openReader(blob.storageKey);
    if (reader.size !== blob.size) {
      await reader.close();
      throw new Error(
        `failed to read blob ${blob.digest}: ${reader.size} bytes stored, ${blob.size} recorded`,
      );
    }
    return reader;
  }

  async open(blob: BlobInfo, range?: ByteRange): Promise<Readable> {
    if (blob.storageKey !== null) return this.storage.read(blob.storageKey, range);
    const content = await this.blobs.content(blob.digest);
    if (!content) throw new Error(`failed to read blob ${blob.digest}: its row holds no content`);
    const bytes = range ? content.subarray(range.start, range.end + 1) : content;
    return Readable.from([bytes], { objectMode: false });
  }

  /**
   * Removes the blob's link from `repository`; the bytes stay for other repositories and the collector. A blob
   * that a manifest of the repository refers to (its config, a layer, or an artifact's blob) is refused with
   * BLOB_REFERENCED, naming that manifest: removing the link would break every pull of it.
   */
  async unlink(repository: string, digest: string, meta: RequestMeta): Promise<void> {
    parseDigest(digest);
    const repositoryId = await this.repositories.find(repository);
    if (repositoryId === null) throw new RegistryError('BLOB_UNKNOWN', { digest });
    const outcome = await this.blobs.unlink(repositoryId, repository, digest, meta);
    if (outcome === 'unknown') throw new RegistryError('BLOB_UNKNOWN', { digest });
    if (outcome !== 'unlinked') throw new RegistryError('BLOB_REFERENCED', { digest, manifest: outcome });
  }

  /**
   * Links a blob of `from` into `repository` without moving bytes. Returns false when `from` does not have
   * it, so the caller can open an ordinary upload instead.
   */
  async mount(repository: string, digest: string, from: string, meta: RequestMeta): Promise<boolean> {
    parseDigest(digest);
    assertName(from);
    try {
      // Cheap and batched: most mounts name a source that has the blob, and the function checks again under lock.
      await this.stat(from, digest);
    } catch (e) {
      if (e instanceof RegistryError && e.code === 'BLOB_UNKNOWN') return false;
      throw e;
    }
    const repositoryId = await this.repositories.ensure(repository);
    return this.blobs.mount(repositoryId, repository, digest, from, meta);
  }
}
