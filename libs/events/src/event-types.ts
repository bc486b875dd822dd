/** Every event type Strata writes, with its payload. */
export interface EventPayloads {
  'upload.started': { upload_id: string };
  'upload.chunk': { upload_id: string; offset: number; size: number };
  'upload.committed': { upload_id: string; digest: string; size: number; existed: boolean };
  'upload.cancelled': { upload_id: string; size: number };
  'upload.expired': { upload_id: string; size: number; idle_since: string };
  'blob.mounted': { digest: string; from: string; size: number };
  'blob.unlinked': { digest: string };
  /** A blob DELETE refused because `manifest`, of the same repository, refers to the blob. */
  'blob.unlink_refused': { digest: string; manifest: string };
  'manifest.pushed': {
    digest: string;
    media_type: string;
    size: number;
    artifact_type: string | null;
    subject: string | null;
    references: { digest: string; kind: string; size: number }[];
  };
  'manifest.deleted': { digest: string; tags: string[] };
  'tag.moved': { tag: string; digest: string; previous: string | null };
  'tag.deleted': { tag: string; digest: string };
  /** A move or delete of a tag (or a delete of its manifest) refused by an immutable-tag rule. */
  'tag.change_refused': {
    tag: string;
    change: 'move' | 'delete';
    digest: string | null;
    rule: number;
    repository_pattern: string;
    tag_pattern: string;
  };
  'immutability.rule_added': { rule: number; repository_pattern: string; tag_pattern: string };
  'immutability.rule_removed': { rule: number; repository_pattern: string; tag_pattern: string };
  /** A storage-maintenance run that reclaimed something: what it removed and vacuumed. */
  'storage.maintained': {
    abandoned_writes: number;
    orphans: number;
    vacuumed: string[];
    refused: string[];
  };
  'test.event': Record<string, unknown>;
}

export type EventType = keyof EventPayloads;

/** Who did it and over which request: `anonymous`, a user name, or `system:<job>`. */
export interface RequestMeta {
  readonly actor: string;
  readonly requestId: string | null;
  readonly clientAddr: string | null;
  readonly userAgent: string | null;
}

export const systemMeta = (job: string): RequestMeta => ({
  actor: `system:${job}`,
  requestId: null,
  clientAddr: null,
  userAgent: null,
});

export interface NewEvent<T extends EventType = EventType> {
  readonly type: T;
  readonly repository: string | null;
  readonly subject: string | null;
  readonly payload: EventPayloads[T];
  readonly meta: RequestMeta;
}

export interface AppendedEvent {
  readonly seq: number;
  readonly at: Date;
}
