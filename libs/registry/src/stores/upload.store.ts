import type { PreparedStatements, Statement, UploadRow } from '@strata/db';
import { metaJson, type RequestMeta } from '@strata/events';

/** One accepted chunk of an upload, as stored. */
export interface Chunk {
  readonly offset: number;
  readonly size: number;
  readonly storage_key: string;
  /** The boot id of the machine that wrote it when its flush was left to the background; null once durable. */
  readonly unsynced_boot: string | null;
}

export interface NewUpload {
  readonly id: string;
  readonly repositoryId: number;
  readonly repository: string;
  readonly meta: RequestMeta;
}

export interface RecordedChunk {
  readonly uploadId: string;
  readonly repository: string;
  /** Where the chunk starts: the upload's size it was written against. */
  readonly offset: number;
  readonly size: number;
  readonly key: string;
  /** The digest of every byte of the upload up to the chunk's end, when it was hashed as it arrived. */
  readonly prefixDigest: string | null;
  readonly unsyncedBoot: string | null;
  readonly meta: RequestMeta;
}

// Named columns, not *: a prepared plan must keep its result shape when a migration adds a column.
const UPLOAD_COLUMNS =
  'id, repository_id, started_at, updated_at, size, hash_state, hash_offset, prefix_digest';

const SQL = {
  start: {
    name: 'upload_start',
    text: 'SELECT strata_start_uploads($1::uuid[], $2::bigint[], $3::text[], $4::jsonb[])',
  },
  load: {
    name: 'upload_load',
    text: `SELECT ${UPLOAD_COLUMNS} FROM uploads WHERE id = $1 AND repository_id = $2`,
  },
  loadById: { name: 'upload_load_by_id', text: `SELECT ${UPLOAD_COLUMNS} FROM uploads WHERE id = $1` },
  size: { name: 'upload_size', text: 'SELECT size FROM uploads WHERE id = $1 AND repository_id = $2' },
  recordChunk: {
    name: 'upload_record_chunk',
    text: `SELECT strata_record_chunk($1::uuid, $2::text, $3::bigint, $4::bigint, $5::text, $6::text, $7::text,
      $8::jsonb) AS accepted`,
  },
  chunks: {
    name: 'upload_chunks',
    text: `SELECT "offset", size, storage_key, unsynced_boot FROM upload_chunks WHERE upload_id = $1
      ORDER BY "offset"`,
  },
  chunkRecorded: {
    name: 'upload_chunk_recorded',
    text: 'SELECT 1 AS recorded FROM upload_chunks WHERE upload_id = $1 AND storage_key = $2',
  },
  saveHashState: {
    name: 'upload_save_hash_state',
    // The saved state only moves forward, from the offset it was computed from, so replicas advancing the same
    // upload at once cannot store a wrong one.
    text: `UPDATE uploads SET hash_state = $2, hash_offset = $3
      WHERE id = $1 AND hash_offset = $4 AND size >= $3`,
  },
  cancel: {
    name: 'upload_cancel',
    text: "SELECT strata_end_upload($1::uuid, $2::bigint, 'upload.cancelled', $3::jsonb) AS keys",
  },
  expire: {
    name: 'upload_expire',
    text: 'SELECT removed, keys FROM strata_expire_uploads($1::float8, $2::int, $3::jsonb)',
  },
} satisfies Record<string, Statement>;

/** The only reader and writer of `uploads` and `upload_chunks`. Writes are the functions of migration 0009. */
export class UploadStore {
  constructor(private readonly statements: PreparedStatements) {}

  /** Sessions and their `upload.started` events, in one statement however many there are. */
  async start(uploads: readonly NewUpload[]): Promise<void> {
    await this.statements.rows(SQL.start, [
      uploads.map((u) => u.id),
      uploads.map((u) => u.repositoryId),
      uploads.map((u) => u.repository),
      uploads.map((u) => metaJson(u.meta)),
    ]);
  }

  async find(id: string, repositoryId: number): Promise<UploadRow | undefined> {
    return this.statements.row<UploadRow>(SQL.load, [id, repositoryId]);
  }

  async findById(id: string): Promise<UploadRow | undefined> {
    return this.statements.row<UploadRow>(SQL.loadById, [id]);
  }

  /** The upload's size now, or null when it is gone. */
  async size(id: string, repositoryId: number): Promise<number | null> {
    return (await this.statements.row<{ size: number }>(SQL.size, [id, repositoryId]))?.size ?? null;
  }

  /** Accepts a stored chunk if the upload is still at its offset: one statement, with its event. */
  async recordChunk(c: RecordedChunk): Promise<boolean> {
    const row = await this.statements.one<{ accepted: boolean }>(SQL.recordChunk, [
      c.uploadId,
      c.repository,
      c.offset,
      c.size,
      c.key,
      c.prefixDigest,
      c.unsyncedBoot,
      metaJson(c.meta),
    ]);
    return row.accepted;
  }

  async chunks(uploadId: string): Promise<Chunk[]> {
    return this.statements.rows<Chunk>(SQL.chunks, [uploadId]);
  }

  /** Whether the chunk at `key` was recorded (a failure reported after its commit may hide that it was). */
  async chunkRecorded(uploadId: string, key: string): Promise<boolean> {
    return (await this.statements.row(SQL.chunkRecorded, [uploadId, key])) !== undefined;
  }

  /** Saves the resumable hash state of bytes [0, `offset`), if the saved one still covers `from` bytes. */
  async saveHashState(id: string, state: Buffer, offset: number, from: number): Promise<void> {
    await this.statements.rows(SQL.saveHashState, [id, state, offset, from]);
  }

  /** Removes the session with its `upload.cancelled` event: its chunks' keys, or null when it was not there. */
  async cancel(id: string, repositoryId: number, meta: RequestMeta): Promise<string[] | null> {
    const row = await this.statements.one<{ keys: string[] | null }>(SQL.cancel, [
      id,
      repositoryId,
      metaJson(meta),
    ]);
    return row.keys;
  }

  /** Removes up to `limit` uploads idle for over `ttlSeconds`, each with `upload.expired`; skips locked ones. */
  async expire(
    ttlSeconds: number,
    limit: number,
    meta: RequestMeta,
  ): Promise<{ removed: number; keys: string[] }> {
    return this.statements.one(SQL.expire, [ttlSeconds, limit, metaJson(meta)]);
  }
}
