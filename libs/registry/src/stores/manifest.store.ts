import { Lookup, type PreparedStatements, type Statement } from '@strata/db';
import { metaJson, type RequestMeta } from '@strata/events';
import type { ParsedManifest } from '@strata/oci';

/** A manifest read: the repository and a tag or a digest. */
interface ManifestKey {
  readonly repositoryId: number;
  readonly key: string;
}

export interface ManifestRowRead {
  readonly digest: string;
  readonly media_type: string;
  readonly size: number;
  readonly content?: Buffer;
}

export interface ManifestPush {
  readonly repositoryId: number;
  readonly repository: string;
  readonly digest: string;
  readonly manifest: ParsedManifest;
  readonly bytes: Buffer;
  /** The tag to point at it, or null for a push by digest. */
  readonly tag: string | null;
  readonly meta: RequestMeta;
}

/** What a push found: done, or the first reference (in descriptor order) that refused it. */
export type PushOutcome =
  | { readonly status: 'ok' | 'contended' }
  | {
      readonly status: 'missing' | 'size';
      readonly digest: string;
      readonly kind: string;
      readonly declared: number;
      readonly stored: number | null;
    };

export interface ReferrerRow {
  readonly media_type: string;
  readonly digest: string;
  readonly size: number;
  readonly artifact_type: string | null;
  readonly annotations: Record<string, string> | null;
}

const SQL = {
  push: {
    name: 'manifest_push',
    text: `SELECT status, ref_digest, ref_kind, declared, stored FROM strata_push_manifest($1::bigint, $2::text,
      $3::text, $4::text, $5::text, $6::text, $7::jsonb, $8::bytea, $9::text[], $10::text[], $11::bigint[],
      $12::text, $13::jsonb, $14::jsonb)`,
  },
  delete: {
    name: 'manifest_delete',
    text: 'SELECT strata_delete_manifest($1::bigint, $2::text, $3::text, $4::jsonb) AS removed',
  },
  referrers: {
    name: 'manifest_referrers',
    text: `SELECT m.media_type, m.digest, m.size, m.artifact_type, m.annotations
      FROM manifests m JOIN repositories r ON r.id = m.repository_id
      WHERE r.name = $1 AND m.subject_digest = $2 AND ($3::text[] IS NULL OR m.artifact_type = ANY($3::text[]))
      ORDER BY m.created_at, m.digest`,
  },
} satisfies Record<string, Statement>;

/** Reads by tag and by digest, with and without the bytes (GET and HEAD), each a fixed statement. */
const READS = {
  tag: {
    head: {
      name: 'manifest_head_by_tag_many',
      text: `SELECT k.i::int AS i, m.digest, m.media_type, m.size
        FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS k(repository_id, key, i)
        JOIN tags t ON t.repository_id = k.repository_id AND t.name = k.key
        JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest`,
    },
    get: {
      name: 'manifest_get_by_tag_many',
      text: `SELECT k.i::int AS i, m.digest, m.media_type, m.size, m.content
        FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS k(repository_id, key, i)
        JOIN tags t ON t.repository_id = k.repository_id AND t.name = k.key
        JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest`,
    },
  },
  digest: {
    head: {
      name: 'manifest_head_by_digest_many',
      text: `SELECT k.i::int AS i, m.digest, m.media_type, m.size
        FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS k(repository_id, key, i)
        JOIN manifests m ON m.repository_id = k.repository_id AND m.digest = k.key`,
    },
    get: {
      name: 'manifest_get_by_digest_many',
      text: `SELECT k.i::int AS i, m.digest, m.media_type, m.size, m.content
        FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS k(repository_id, key, i)
        JOIN manifests m ON m.repository_id = k.repository_id AND m.digest = k.key`,
    },
  },
} satisfies Record<'tag' | 'digest', Record<'head' | 'get', Statement>>;

type Reads = Record<'tag' | 'digest', Record<'head' | 'get', Lookup<ManifestKey, ManifestRowRead>>>;

/**
 * The only reader and writer of `manifests` and `manifest_references`. A push, which also moves its tag, is one
 * call of `strata_push_manifest` (migration 0009), whose lock order every other write follows.
 */
export class ManifestStore {
  private readonly reads: Reads;

  constructor(private readonly statements: PreparedStatements) {
    const lookup = (statement: Statement): Lookup<ManifestKey, ManifestRowRead> =>
      new Lookup(statements, statement, (keys) => [keys.map((k) => k.repositoryId), keys.map((k) => k.key)]);
    this.reads = {
      tag: { head: lookup(READS.tag.head), get: lookup(READS.tag.get) },
      digest: { head: lookup(READS.digest.head), get: lookup(READS.digest.get) },
    };
  }

  /** The manifest a tag or digest names in the repository, with its bytes when `withContent`; batched. */
  async find(
    repositoryId: number,
    by: 'tag' | 'digest',
    key: string,
    withContent: boolean,
  ): Promise<ManifestRowRead | undefined> {
    return this.reads[by][withContent ? 'get' : 'head'].find({ repositoryId, key });
  }

  /** Stores the manifest unless it is, with its references, and moves the tag: one statement. */
  async push(p: ManifestPush): Promise<PushOutcome> {
    const m = p.manifest;
    const refs = m.references;
    const pushed = {
      digest: p.digest,
      media_type: m.mediaType,
      size: p.bytes.length,
      artifact_type: m.artifactType,
      subject: m.subject,
      references: refs.map((r) => ({ digest: r.digest, kind: r.kind, size: r.size })),
    };
    const row = await this.statements.one<{
      status: 'ok' | 'contended' | 'missing' | 'size';
      ref_digest: string | null;
      ref_kind: string | null;
      declared: number | null;
      stored: number | null;
    }>(SQL.push, [
      p.repositoryId,
      p.repository,
      p.digest,
      m.mediaType,
      m.artifactType,
      m.subject,
      m.annotations ? JSON.stringify(m.annotations) : null,
      p.bytes,
      refs.map((r) => r.digest),
      refs.map((r) => r.kind),
      refs.map((r) => r.size),
      p.tag,
      JSON.stringify(pushed),
      metaJson(p.meta),
    ]);
    if (row.status === 'ok' || row.status === 'contended') return { status: row.status };
    return {
      status: row.status,
      digest: row.ref_digest ?? '',
      kind: row.ref_kind ?? '',
      declared: row.declared ?? 0,
      stored: row.stored,
    };
  }

  /** Removes the manifest, its references and every tag on it; false when it was not there. */
  async delete(
    repositoryId: number,
    repository: string,
    digest: string,
    meta: RequestMeta,
  ): Promise<boolean> {
    const row = await this.statements.one<{ removed: boolean }>(SQL.delete, [
      repositoryId,
      repository,
      digest,
      metaJson(meta),
    ]);
    return row.removed;
  }

  /** Manifests of the repository whose subject is `digest`, optionally of the given artifact types only. */
  async referrers(
    repository: string,
    digest: string,
    artifactTypes: readonly string[] | null,
  ): Promise<ReferrerRow[]> {
    return this.statements.rows<ReferrerRow>(SQL.referrers, [repository, digest, artifactTypes]);
  }
}
