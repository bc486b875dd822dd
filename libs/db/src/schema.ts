import type { ColumnType, Generated, Insertable, Selectable } from 'kysely';

/**
 * The typed schema, kept by hand beside `migrations/`; `test/medium/schema.spec.ts` fails when a column here
 * and in the migrated database disagree.
 */
type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;
type Json = ColumnType<Record<string, unknown>, string | undefined, string>;

export interface EventsTable {
  seq: Generated<number>;
  at: ColumnType<Date, never, never>;
  xid: ColumnType<string, never, never>;
  actor: string;
  type: string;
  repository: string | null;
  subject: string | null;
  payload: Json;
  request_id: string | null;
  client_addr: string | null;
  user_agent: string | null;
}

export interface RepositoriesTable {
  id: Generated<number>;
  name: string;
  created_at: Generated<Date>;
}

export interface UploadsTable {
  id: string;
  repository_id: number;
  started_at: Generated<Date>;
  updated_at: Generated<Date>;
  size: ColumnType<number, number | undefined, number>;
  hash_state: Buffer | null;
  hash_offset: ColumnType<number, number | undefined, number>;
  prefix_digest: string | null;
}

export interface UploadChunksTable {
  upload_id: string;
  offset: number;
  size: number;
  storage_key: string;
  /** Boot id of the machine that wrote the chunk without flushing it; null when durable as recorded. */
  unsynced_boot: ColumnType<string | null, string | null | undefined, string | null>;
}

export interface BlobsTable {
  digest: string;
  size: number;
  /** Where the bytes are stored, or null when they are `content`. */
  storage_key: string | null;
  /** The bytes of a small blob, kept in its row. */
  content: Buffer | null;
  created_at: Generated<Date>;
}

export interface RepositoryBlobsTable {
  repository_id: number;
  digest: string;
  created_at: Generated<Date>;
}

export interface ManifestsTable {
  repository_id: number;
  digest: string;
  media_type: string;
  artifact_type: string | null;
  subject_digest: string | null;
  annotations: ColumnType<Record<string, string> | null, string | null, string | null>;
  size: number;
  content: Buffer;
  created_at: Generated<Date>;
}

export interface ManifestReferencesTable {
  repository_id: number;
  parent_digest: string;
  child_digest: string;
  kind: 'config' | 'layer' | 'manifest' | 'blob';
  position: number;
  size: number;
}

export interface TagsTable {
  repository_id: number;
  name: string;
  digest: string;
  updated_at: Timestamp;
}

export interface TagLifetimesTable {
  id: Generated<number>;
  repository_id: number;
  tag: string;
  digest: string;
  started_at: Timestamp;
  started_seq: number;
  ended_at: Timestamp | null;
  ended_seq: number | null;
}

export interface Database {
  events: EventsTable;
  repositories: RepositoriesTable;
  uploads: UploadsTable;
  upload_chunks: UploadChunksTable;
  blobs: BlobsTable;
  repository_blobs: RepositoryBlobsTable;
  manifests: ManifestsTable;
  manifest_references: ManifestReferencesTable;
  tags: TagsTable;
  tag_lifetimes: TagLifetimesTable;
}

export type EventRow = Selectable<EventsTable>;
export type NewEventRow = Insertable<EventsTable>;
export type UploadRow = Selectable<UploadsTable>;
export type BlobRow = Selectable<BlobsTable>;
export type ManifestRow = Selectable<ManifestsTable>;
