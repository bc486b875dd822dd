import { Lookup, type PreparedStatements, type Statement, type Tx } from '@strata/db';
import { metaJson, type RequestMeta } from '@strata/events';

/** A blob ready to be made visible in a repository: what `publish` writes. */
export interface Publication {
  /** The upload session it completes, or the new session's id for a POST that carries the blob itself. */
  readonly uploadId: string;
  /** True when `uploadId` is a session to complete, which must still hold exactly `uploadSize` bytes. */
  readonly completes: boolean;
  readonly uploadSize: number;
  readonly repositoryId: number;
  readonly repository: string;
  readonly digest: string;
  readonly size: number;
  /**
   * Where the bytes are: at `key` in storage, or `content` in the row; neither when the blob was found stored
   * already and only the link is made.
   */
  readonly key: string | null;
  readonly content: Buffer | null;
  /** The bytes came in the request that completes the upload: its `upload.chunk` event is written too. */
  readonly whole: boolean;
  readonly meta: RequestMeta;
}

export interface PublishOutcome {
  /** The session was still there to complete, at the size expected (always, for a POST carrying the blob). */
  readonly accepted: boolean;
  /** This publication inserted the blob's row, rather than finding it. */
  readonly created: boolean;
  /** The size of the stored blob under the digest (null when there is none: not accepted, or nothing to link). */
  readonly storedSize: number | null;
  /** For a session not accepted: its size now, or null when it is gone. */
  readonly uploadSize: number | null;
}

interface LinkKey {
  readonly repositoryId: number;
  readonly digest: string;
}

export interface LinkedBlob {
  readonly size: number;
  readonly storage_key: string | null;
}

const SQL = {
  publish: {
    name: 'blob_publish',
    text: `SELECT k, accepted, created, stored_size, upload_size FROM strata_publish_blobs($1::uuid[], $2::boolean[],
      $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::bigint[], $8::text[], $9::bytea, $10::int[],
      $11::boolean[], $12::jsonb[])`,
  },
  content: { name: 'blob_content', text: 'SELECT content FROM blobs WHERE digest = $1' },
  size: { name: 'blob_size', text: 'SELECT size FROM blobs WHERE digest = $1' },
  keyPublished: {
    name: 'blob_key_published',
    text: 'SELECT 1 AS published FROM blobs WHERE storage_key = $1',
  },
  linked: {
    name: 'blob_linked',
    text: 'SELECT 1 AS linked FROM repository_blobs WHERE repository_id = $1 AND digest = $2',
  },
  mount: {
    name: 'blob_mount',
    text: 'SELECT strata_mount_blob($1::bigint, $2::text, $3::text, $4::text, $5::jsonb) AS mounted',
  },
  unlink: {
    name: 'blob_unlink',
    text: 'SELECT strata_unlink_blob($1::bigint, $2::text, $3::text, $4::jsonb) AS outcome',
  },
} satisfies Record<string, Statement>;

const STAT_MANY: Statement = {
  name: 'blob_stat_many',
  text: `SELECT k.i::int AS i, b.size, b.storage_key
    FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS k(repository_id, digest, i)
    JOIN repository_blobs rb ON rb.repository_id = k.repository_id AND rb.digest = k.digest
    JOIN blobs b ON b.digest = rb.digest`,
};

/** The only reader and writer of `blobs` and `repository_blobs`. Writes are the functions of migration 0009. */
export class BlobStore {
  /** (repository id, digest) → the linked blob's size and storage key: HEAD and GET of blobs, batched. */
  private readonly links: Lookup<LinkKey, LinkedBlob>;

  constructor(private readonly statements: PreparedStatements) {
    this.links = new Lookup(statements, STAT_MANY, (keys) => [
      keys.map((k) => k.repositoryId),
      keys.map((k) => k.digest),
    ]);
  }

  /**
   * Makes blobs visible, all in one statement, each accepted or not on its own; on `tx` when the bytes must
   * become visible with it (a composition the storage makes inside the transaction).
   */
  async publish(batch: readonly Publication[], tx?: Tx): Promise<PublishOutcome[]> {
    const inline: Buffer[] = [];
    let at = 0;
    const contentAt = batch.map((p) => {
      if (p.content === null) return null;
      inline.push(p.content);
      at += p.content.length;
      return at - p.content.length;
    });
    const rows = await this.statements.rows<{
      k: number;
      accepted: boolean;
      created: boolean;
      stored_size: number | null;
      upload_size: number | null;
    }>(
      SQL.publish,
      [
        batch.map((p) => p.uploadId),
        batch.map((p) => p.completes),
        batch.map((p) => p.uploadSize),
        batch.map((p) => p.repositoryId),
        batch.map((p) => p.repository),
        batch.map((p) => p.digest),
        batch.map((p) => p.size),
        batch.map((p) => p.key),
        Buffer.concat(inline, at),
        contentAt,
        batch.map((p) => p.whole),
        batch.map((p) => metaJson(p.meta)),
      ],
      tx,
    );
    return batch.map((p, i) => {
      const row = rows[i];
      if (row?.k !== i + 1)
        throw new Error(`failed to publish ${p.digest}: the statement returned no row for it`);
      return {
        accepted: row.accepted,
        created: row.created,
        storedSize: row.stored_size,
        uploadSize: row.upload_size,
      };
    });
  }

  /** The blob as linked in the repository, or undefined. */
  async linked(repositoryId: number, digest: string): Promise<LinkedBlob | undefined> {
    return this.links.find({ repositoryId, digest });
  }

  /** Whether the repository links the blob, read now (not batched). */
  async isLinked(repositoryId: number, digest: string): Promise<boolean> {
    return (await this.statements.row(SQL.linked, [repositoryId, digest])) !== undefined;
  }

  /** The bytes of a blob kept in its row, or null. */
  async content(digest: string): Promise<Buffer | null> {
    return (await this.statements.row<{ content: Buffer | null }>(SQL.content, [digest]))?.content ?? null;
  }

  /** The stored size of the blob, or null when there is none. */
  async size(digest: string): Promise<number | null> {
    return (await this.statements.row<{ size: number }>(SQL.size, [digest]))?.size ?? null;
  }

  /** Whether a blob row names the storage key (so its bytes must stay). */
  async keyPublished(key: string): Promise<boolean> {
    return (await this.statements.row(SQL.keyPublished, [key])) !== undefined;
  }

  /** Links the blob of `from` into the repository; false when `from` does not have it. */
  async mount(
    repositoryId: number,
    repository: string,
    digest: string,
    from: string,
    meta: RequestMeta,
  ): Promise<boolean> {
    const row = await this.statements.one<{ mounted: boolean }>(SQL.mount, [
      repositoryId,
      repository,
      digest,
      from,
      metaJson(meta),
    ]);
    return row.mounted;
  }

  /**
   * Removes the link unless a manifest of the repository refers to the blob: 'unlinked', 'unknown' (no link),
   * or the digest of a referring manifest (the refusal is recorded).
   */
  async unlink(repositoryId: number, repository: string, digest: string, meta: RequestMeta): Promise<string> {
    const row = await this.statements.one<{ outcome: string }>(SQL.unlink, [
      repositoryId,
      repository,
      digest,
      metaJson(meta),
    ]);
    return row.outcome;
  }
}
