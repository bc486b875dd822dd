import { Readable } from 'node:stream';
import { type Db, Lookup, type PreparedStatements } from '@strata/db';
import { EventStore, type RequestMeta } from '@strata/events';
import { assertName, parseDigest, RegistryError } from '@strata/oci';
import type { BlobStorage, ByteRange, ObjectReader } from '@strata/storage';
import type { RepositoryStore } from './repository.store';

export interface BlobInfo {
  readonly digest: string;
  readonly size: number;
  /** Where the bytes are stored; null for a small blob kept in its row. */
  readonly storageKey: string | null;
}

interface LinkKey {
  readonly repositoryId: number;
  readonly digest: string;
}

/** Reads and links of blobs that are already stored. Reads touch projections only. */
export class BlobService {
  private readonly events = new EventStore();
  /** (repository id, digest) → the linked blob's size and storage key: HEAD and GET of blobs, batched. */
  private readonly linked: Lookup<LinkKey, { size: number; storage_key: string | null }>;

  constructor(
    private readonly db: Db,
    private readonly storage: BlobStorage,
    private readonly repositories: RepositoryStore,
    private readonly reads: PreparedStatements,
  ) {
    this.linked = new Lookup(
      reads,
      'blob_stat_many',
      `SELECT k.i::int AS i, b.size, b.storage_key
       FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS k(repository_id, digest, i)
       JOIN repository_blobs rb ON rb.repository_id = k.repository_id AND rb.digest = k.digest
       JOIN blobs b ON b.digest = rb.digest`,
      (keys) => [keys.map((k) => k.repositoryId), keys.map((k) => k.digest)],
    );
  }

  /** The blob as linked in `repository`; BLOB_UNKNOWN when it is not, even if another repository has it. */
  async stat(repository: string, digest: string): Promise<BlobInfo> {
    parseDigest(digest);
    const repositoryId = await this.repositories.find(repository);
    if (repositoryId === null) throw new RegistryError('BLOB_UNKNOWN', { digest });
    const row = await this.linked.find({ repositoryId, digest });
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
    const row = await this.reads.first<{ content: Buffer | null }>(
      'blob_content',
      'SELECT content FROM blobs WHERE digest = $1',
      [blob.digest],
    );
    if (!row?.content) throw new Error(`failed to read blob ${blob.digest}: its row holds no content`);
    const bytes = range ? row.content.subarray(range.start, range.end + 1) : row.content;
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
    const referencedBy = await this.db.transaction().execute(async (tx) => {
      // The link is locked first: a manifest push holds it FOR SHARE from its check to its commit, so once this
      // lock is had, the push that referred to the blob has committed its references, and the statement below
      // (a new snapshot) sees them. A push that comes later finds the link gone and answers MANIFEST_BLOB_UNKNOWN.
      const link = await tx
        .selectFrom('repository_blobs')
        .select('digest')
        .where('repository_id', '=', repositoryId)
        .where('digest', '=', digest)
        .forUpdate()
        .executeTakeFirst();
      if (!link) throw new RegistryError('BLOB_UNKNOWN', { digest });
      const user = await tx
        .selectFrom('manifest_references')
        .select('parent_digest')
        .where('repository_id', '=', repositoryId)
        .where('child_digest', '=', digest)
        .where('kind', '<>', 'manifest')
        .limit(1)
        .executeTakeFirst();
      if (user) {
        // The refusal is part of the history too: who tried to remove what, and which manifest kept it.
        await this.events.append(tx, {
          type: 'blob.unlink_refused',
          repository,
          subject: digest,
          payload: { digest, manifest: user.parent_digest },
          meta,
        });
        return user.parent_digest;
      }
      await tx
        .deleteFrom('repository_blobs')
        .where('repository_id', '=', repositoryId)
        .where('digest', '=', digest)
        .execute();
      await this.events.append(tx, {
        type: 'blob.unlinked',
        repository,
        subject: digest,
        payload: { digest },
        meta,
      });
      return null;
    });
    if (referencedBy !== null) throw new RegistryError('BLOB_REFERENCED', { digest, manifest: referencedBy });
  }

  /**
   * Links a blob of `from` into `repository` without moving bytes. Returns false when `from` does not have
   * it, so the caller can open an ordinary upload instead.
   */
  async mount(repository: string, digest: string, from: string, meta: RequestMeta): Promise<boolean> {
    parseDigest(digest);
    assertName(from);
    let source: BlobInfo;
    try {
      source = await this.stat(from, digest);
    } catch (e) {
      if (e instanceof RegistryError && e.code === 'BLOB_UNKNOWN') return false;
      throw e;
    }
    const repositoryId = await this.repositories.ensure(repository);
    return this.db.transaction().execute(async (tx) => {
      // The source link is re-checked under a share lock, so a concurrent unlink cannot slip between.
      const still = await tx
        .selectFrom('repository_blobs as rb')
        .innerJoin('repositories as r', 'r.id', 'rb.repository_id')
        .select('rb.digest')
        .where('r.name', '=', from)
        .where('rb.digest', '=', digest)
        .forShare()
        .executeTakeFirst();
      if (!still) return false;
      const ins = await tx
        .insertInto('repository_blobs')
        .values({ repository_id: repositoryId, digest })
        .onConflict((oc) => oc.columns(['repository_id', 'digest']).doNothing())
        .executeTakeFirst();
      if (ins.numInsertedOrUpdatedRows === 1n || from !== repository) {
        await this.events.append(tx, {
          type: 'blob.mounted',
          repository,
          subject: digest,
          payload: { digest, from, size: source.size },
          meta,
        });
      }
      return true;
    });
  }
}
