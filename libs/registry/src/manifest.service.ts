import { createHash } from 'node:crypto';
import { sql } from 'kysely';
import { type Db, Lookup, type PreparedStatements, type Tx } from '@strata/db';
import { EventStore, type NewEvent, type RequestMeta, type StatementEvent } from '@strata/events';
import {
  assertName,
  isValidTag,
  looksLikeDigest,
  MAX_MANIFEST_BYTES,
  type ParsedDigest,
  type ParsedManifest,
  parseDigest,
  parseManifest,
  RegistryError,
} from '@strata/oci';
import type { RepositoryStore } from './repository.store';

export type ManifestReferenceTarget = { readonly tag: string } | { readonly digest: ParsedDigest };

export interface ManifestInfo {
  readonly digest: string;
  readonly mediaType: string;
  readonly size: number;
}

export interface StoredManifest extends ManifestInfo {
  /** The exact bytes that were pushed. */
  readonly content: Buffer;
}

export interface PushedManifest {
  readonly digest: string;
  readonly subject: string | null;
}

/**
 * A URL reference: a digest (malformed ones refused with DIGEST_INVALID), else a tag. A string that is neither
 * gives null, which a read treats as unknown and a push refuses with TAG_INVALID.
 */
export function parseReference(reference: string): ManifestReferenceTarget | null {
  if (looksLikeDigest(reference)) return { digest: parseDigest(reference) };
  return isValidTag(reference) ? { tag: reference } : null;
}

/**
 * Reads at most `limit` bytes. The first byte past it stops the read with MANIFEST_TOO_LARGE, and the iterator is
 * left unreturned on purpose: returning it would destroy the request and its socket before the 413 is written.
 */
export async function readLimited(body: AsyncIterable<Buffer> | null, limit: number): Promise<Buffer> {
  if (body === null) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  let size = 0;
  const it = body[Symbol.asyncIterator]();
  for (;;) {
    const next = await it.next();
    if (next.done) break;
    size += next.value.length;
    if (size > limit) throw new RegistryError('MANIFEST_TOO_LARGE', { limit });
    chunks.push(next.value);
  }
  return Buffer.concat(chunks, size);
}

/** A manifest read: the repository and a tag or a digest. */
interface ManifestKey {
  readonly repositoryId: number;
  readonly key: string;
}

interface ManifestRowRead {
  digest: string;
  media_type: string;
  size: number;
  content?: Buffer;
}

function pushedEvent(
  repository: string,
  digest: string,
  manifest: ParsedManifest,
  size: number,
  meta: RequestMeta,
): NewEvent<'manifest.pushed'> {
  return {
    type: 'manifest.pushed',
    repository,
    subject: digest,
    payload: {
      digest,
      media_type: manifest.mediaType,
      size,
      artifact_type: manifest.artifactType,
      subject: manifest.subject,
      references: manifest.references.map((r) => ({ digest: r.digest, kind: r.kind, size: r.size })),
    },
    meta,
  };
}

const UNIQUE_RETRIES = 5;
/** Whole write attempts for one manifest request when concurrent writers to the same rows get in its way. */
const WRITE_ATTEMPTS = 5;

/** A row this request needs kept being changed under it by concurrent requests: the write may be tried again. */
class ContendedError extends Error {}

/**
 * Deadlocks and serialization failures between concurrent writers of one tag or manifest (the one-statement
 * push and the general path take their row locks in different orders), and rows deleted under a write: each
 * attempt is its own transaction, so the request tries again, a few times, then answers 503 to be retried.
 */
async function retryContended<T>(write: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await write();
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      const contended = e instanceof ContendedError || code === '40P01' || code === '40001';
      if (!contended) throw e;
      if (attempt >= WRITE_ATTEMPTS) {
        if (e instanceof ContendedError)
          throw new RegistryError('UNAVAILABLE', `${e.message}; try again`, { 'Retry-After': '1' });
        throw e;
      }
      await new Promise((r) => setTimeout(r, attempt * (2 + Math.random() * 8)));
    }
  }
}
const FOREIGN_KEY_VIOLATION = '23503';
const AT_ONCE_MAX_REFERENCES = 256;
const UNIQUE_VIOLATION = '23505';
const INSERT_BATCH = 1000;

/**
 * Manifests and the tags on them. Every write is one transaction holding its projection rows and events. A tag's
 * row is the lock that serializes everything done to the tag, so its lifetimes never overlap; a manifest's row is
 * share-locked by pushes that rely on it and update-locked by its deletion.
 */
export class ManifestService {
  private readonly events = new EventStore();

  /** Manifest reads by tag and by digest, with and without the bytes (GET and HEAD): batched. */
  private readonly reads: Record<
    'tag' | 'digest',
    Record<'head' | 'get', Lookup<ManifestKey, ManifestRowRead>>
  >;

  constructor(
    private readonly db: Db,
    private readonly repositories: RepositoryStore,
    private readonly prepared: PreparedStatements,
  ) {
    const lookup = (by: 'tag' | 'digest', withContent: boolean): Lookup<ManifestKey, ManifestRowRead> => {
      const columns = withContent
        ? 'm.digest, m.media_type, m.size, m.content'
        : 'm.digest, m.media_type, m.size';
      const join =
        by === 'tag'
          ? `JOIN tags t ON t.repository_id = k.repository_id AND t.name = k.key
             JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest`
          : 'JOIN manifests m ON m.repository_id = k.repository_id AND m.digest = k.key';
      return new Lookup(
        prepared,
        `manifest_${withContent ? 'get' : 'head'}_by_${by}_many`,
        `SELECT k.i::int AS i, ${columns}
         FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS k(repository_id, key, i)
         ${join}`,
        (keys) => [keys.map((k) => k.repositoryId), keys.map((k) => k.key)],
      );
    };
    this.reads = {
      tag: { head: lookup('tag', false), get: lookup('tag', true) },
      digest: { head: lookup('digest', false), get: lookup('digest', true) },
    };
  }

  async put(
    repository: string,
    reference: string,
    contentType: string | null | undefined,
    body: AsyncIterable<Buffer> | null,
    meta: RequestMeta,
  ): Promise<PushedManifest> {
    assertName(repository);
    const target = parseReference(reference);
    if (target === null) throw new RegistryError('TAG_INVALID', { tag: reference });
    const bytes = await readLimited(body, MAX_MANIFEST_BYTES);
    const algorithm = 'digest' in target ? target.digest.algorithm : 'sha256';
    const digest = `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
    if ('digest' in target && target.digest.digest !== digest) {
      throw new RegistryError('DIGEST_INVALID', { expected: target.digest.digest, actual: digest });
    }
    const manifest = parseManifest(bytes, contentType);
    const first = manifest.references[0];
    if (first && (await this.repositories.find(repository)) === null)
      throw this.missing(first.kind, first.digest);
    const repositoryId = await this.repositories.ensure(repository);
    const tag = 'tag' in target ? target.tag : null;
    await retryContended(async () => {
      if (await this.putAtOnce(repositoryId, repository, tag, digest, manifest, bytes, meta)) return;
      await this.writeManifest(repositoryId, repository, target, digest, manifest, bytes, meta);
    });
    return { digest, subject: manifest.subject };
  }

  /** The general path of a push: references checked, manifest stored unless it is, tag moved, in one transaction. */
  private async writeManifest(
    repositoryId: number,
    repository: string,
    target: NonNullable<ReturnType<typeof parseReference>>,
    digest: string,
    manifest: ParsedManifest,
    bytes: Buffer,
    meta: RequestMeta,
  ): Promise<void> {
    await this.db.transaction().execute(async (tx) => {
      await this.checkReferences(tx, repositoryId, manifest);
      const inserted = await this.insertManifest(tx, repositoryId, digest, manifest, bytes);
      if (inserted) {
        const rows = manifest.references.map((r, position) => ({
          repository_id: repositoryId,
          parent_digest: digest,
          child_digest: r.digest,
          kind: r.kind,
          position,
          size: r.size,
        }));
        // Batched: a 4 MiB manifest may list more descriptors than one statement can bind parameters for.
        for (let i = 0; i < rows.length; i += INSERT_BATCH) {
          await tx
            .insertInto('manifest_references')
            .values(rows.slice(i, i + INSERT_BATCH))
            .execute();
        }
        await this.events.append(tx, pushedEvent(repository, digest, manifest, bytes.length, meta));
      }
      if ('tag' in target) await this.moveTag(tx, repositoryId, repository, target.tag, digest, meta);
    });
  }

  /**
   * The usual push in one statement, one round trip and one commit: every reference is present with its size
   * (share-locked, as in `checkReferences`), the manifest is stored unless it already is, and a tag that does not
   * exist yet is created. Anything else (a missing reference, a tag that already exists and may have to move,
   * a concurrent delete) makes it do nothing and return false, and the caller takes the general path.
   */
  private async putAtOnce(
    repositoryId: number,
    repository: string,
    tag: string | null,
    digest: string,
    manifest: ParsedManifest,
    bytes: Buffer,
    meta: RequestMeta,
  ): Promise<boolean> {
    const refs = manifest.references;
    // The reference check here compares every descriptor with every row found; past a few hundred descriptors
    // the general path's keyed lookups are cheaper.
    if (refs.length > AT_ONCE_MAX_REFERENCES) return false;
    const kinds = refs.map((r) => r.kind);
    const digests = refs.map((r) => r.digest);
    const sizes = refs.map((r) => r.size);
    const blobDigests = [...new Set(refs.filter((r) => r.kind !== 'manifest').map((r) => r.digest))];
    const childDigests = [...new Set(refs.filter((r) => r.kind === 'manifest').map((r) => r.digest))];
    const events: StatementEvent[] = [
      { ...pushedEvent(repository, digest, manifest, bytes.length, meta), onlyIf: 'manifest' },
    ];
    if (tag !== null) {
      events.push({
        type: 'tag.moved',
        repository,
        subject: tag,
        payload: { tag, digest, previous: null },
        meta,
        onlyIf: 'tag',
      });
    }
    const tagging =
      tag === null
        ? sql``
        : sql`, tag AS (
            INSERT INTO tags (repository_id, name, digest) SELECT ${repositoryId}::bigint, ${tag}::text, ${digest}::text FROM ok
            ON CONFLICT (repository_id, name) DO NOTHING
            RETURNING name
          )`;
    const lifetime =
      tag === null
        ? sql``
        : sql`, lifetime AS (
            INSERT INTO tag_lifetimes (repository_id, tag, digest, started_at, started_seq)
            SELECT ${repositoryId}::bigint, ${tag}::text, ${digest}::text, clock_timestamp(), seq
            FROM recorded WHERE type = 'tag.moved'
          )`;
    const statement = sql<{ done: boolean; tagged: boolean }>`WITH blob_refs AS MATERIALIZED (
        SELECT rb.digest, b.size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest
        WHERE rb.repository_id = ${repositoryId}::bigint AND rb.digest = ANY(${blobDigests}::text[])
        FOR SHARE OF rb
      ), child_refs AS MATERIALIZED (
        SELECT digest, size FROM manifests
        WHERE repository_id = ${repositoryId}::bigint AND digest = ANY(${childDigests}::text[])
        FOR SHARE
      ), ok AS (
        SELECT 1 AS ok
        WHERE NOT EXISTS (
          SELECT 1 FROM unnest(${digests}::text[], ${sizes}::bigint[], ${kinds}::text[]) AS r(digest, size, kind)
          WHERE NOT EXISTS (
            SELECT 1 FROM blob_refs b WHERE r.kind <> 'manifest' AND b.digest = r.digest AND b.size = r.size
            UNION ALL
            SELECT 1 FROM child_refs c WHERE r.kind = 'manifest' AND c.digest = r.digest AND c.size = r.size
          )
        ) AND NOT EXISTS (
          SELECT 1 FROM tags WHERE repository_id = ${repositoryId}::bigint AND name = ${tag}::text
        )
      ), manifest AS (
        INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject_digest, annotations, size, content)
        SELECT ${repositoryId}::bigint, ${digest}::text, ${manifest.mediaType}::text, ${manifest.artifactType}::text,
               ${manifest.subject}::text, ${manifest.annotations ? JSON.stringify(manifest.annotations) : null}::jsonb,
               ${bytes.length}::bigint, ${bytes}::bytea
        FROM ok
        ON CONFLICT (repository_id, digest) DO NOTHING
        RETURNING digest
      ), refs AS (
        INSERT INTO manifest_references (repository_id, parent_digest, child_digest, kind, position, size)
        SELECT ${repositoryId}::bigint, ${digest}::text, r.digest, r.kind, r.position - 1, r.size
        FROM manifest, unnest(${digests}::text[], ${kinds}::text[], ${sizes}::bigint[]) WITH ORDINALITY
             AS r(digest, kind, size, position)
      )${tagging}, recorded AS (${this.events.insertion(events)})${lifetime}
      SELECT EXISTS (SELECT 1 FROM ok) AS done,
             ${tag === null ? sql`true` : sql`EXISTS (SELECT 1 FROM tag)`} AS tagged`;
    let outcome: { done: boolean; tagged: boolean } | undefined;
    try {
      outcome = (
        await this.prepared.run(
          tag === null ? 'manifest_put_digest' : 'manifest_put_tag',
          statement.compile(this.db),
        )
      )[0];
    } catch (e) {
      // A manifest deleted, or a tag created, by a concurrent request after this statement's snapshot.
      const code = (e as { code?: string }).code;
      if (code === FOREIGN_KEY_VIOLATION || code === UNIQUE_VIOLATION) return false;
      throw e;
    }
    // Not tagged although done: the tag appeared after the snapshot. The manifest is stored; the general path
    // finds it and moves the tag.
    return outcome?.done === true && outcome.tagged;
  }

  private missing(kind: string, digest: string): RegistryError {
    return kind === 'manifest'
      ? new RegistryError('MANIFEST_UNKNOWN', {
          digest,
          reason: 'the index references a manifest not in this repository',
        })
      : new RegistryError('MANIFEST_BLOB_UNKNOWN', { digest });
  }

  /**
   * Every blob must be linked in the repository and every child manifest stored there, with the size the
   * descriptor claims. The rows are share-locked so an unlink or delete cannot slip in before the commit.
   */
  private async checkReferences(tx: Tx, repositoryId: number, manifest: ParsedManifest): Promise<void> {
    const blobDigests = [
      ...new Set(manifest.references.filter((r) => r.kind !== 'manifest').map((r) => r.digest)),
    ];
    const childDigests = [
      ...new Set(manifest.references.filter((r) => r.kind === 'manifest').map((r) => r.digest)),
    ];
    const sizes = new Map<string, number>();
    if (blobDigests.length > 0) {
      const rows = await tx
        .selectFrom('repository_blobs as rb')
        .innerJoin('blobs as b', 'b.digest', 'rb.digest')
        .select(['rb.digest', 'b.size'])
        .where('rb.repository_id', '=', repositoryId)
        .where('rb.digest', '=', sql<string>`any(${blobDigests}::text[])`)
        .forShare('rb')
        .execute();
      for (const r of rows) sizes.set(r.digest, r.size);
    }
    if (childDigests.length > 0) {
      const rows = await tx
        .selectFrom('manifests')
        .select(['digest', 'size'])
        .where('repository_id', '=', repositoryId)
        .where('digest', '=', sql<string>`any(${childDigests}::text[])`)
        .forShare()
        .execute();
      for (const r of rows) sizes.set(r.digest, r.size);
    }
    for (const r of manifest.references) {
      const size = sizes.get(r.digest);
      if (size === undefined) throw this.missing(r.kind, r.digest);
      if (size !== r.size) {
        throw new RegistryError('MANIFEST_INVALID', {
          reason: 'descriptor size does not match the stored content',
          digest: r.digest,
          declared: r.size,
          stored: size,
        });
      }
    }
  }

  /** True when this push stored the manifest; false when it was there already, now share-locked. */
  private async insertManifest(
    tx: Tx,
    repositoryId: number,
    digest: string,
    manifest: ParsedManifest,
    bytes: Buffer,
  ): Promise<boolean> {
    for (let attempt = 0; attempt < UNIQUE_RETRIES; attempt++) {
      const ins = await tx
        .insertInto('manifests')
        .values({
          repository_id: repositoryId,
          digest,
          media_type: manifest.mediaType,
          artifact_type: manifest.artifactType,
          subject_digest: manifest.subject,
          annotations: manifest.annotations ? JSON.stringify(manifest.annotations) : null,
          size: bytes.length,
          content: bytes,
        })
        .onConflict((oc) => oc.columns(['repository_id', 'digest']).doNothing())
        .executeTakeFirst();
      if (ins.numInsertedOrUpdatedRows === 1n) return true;
      const held = await tx
        .selectFrom('manifests')
        .select('digest')
        .where('repository_id', '=', repositoryId)
        .where('digest', '=', digest)
        .forShare()
        .executeTakeFirst();
      // Absent here means a concurrent delete won between the two statements: insert again.
      if (held) return false;
    }
    throw new ContendedError(`failed to store manifest ${digest}: it kept being deleted concurrently`);
  }

  /** Points `tag` at `digest` under the tag row's lock; a no-op when it already does. */
  private async moveTag(
    tx: Tx,
    repositoryId: number,
    repository: string,
    tag: string,
    digest: string,
    meta: RequestMeta,
  ): Promise<void> {
    for (let attempt = 0; attempt < UNIQUE_RETRIES; attempt++) {
      const created = await tx
        .insertInto('tags')
        .values({ repository_id: repositoryId, name: tag, digest })
        .onConflict((oc) => oc.columns(['repository_id', 'name']).doNothing())
        .returning('name')
        .executeTakeFirst();
      let previous: string | null = null;
      if (!created) {
        const current = await tx
          .selectFrom('tags')
          .select('digest')
          .where('repository_id', '=', repositoryId)
          .where('name', '=', tag)
          .forUpdate()
          .executeTakeFirst();
        if (!current) continue; // deleted between the two statements
        if (current.digest === digest) return;
        previous = current.digest;
        await tx
          .updateTable('tags')
          .set({ digest, updated_at: sql<Date>`now()` })
          .where('repository_id', '=', repositoryId)
          .where('name', '=', tag)
          .execute();
      }
      const event = await this.events.append(tx, {
        type: 'tag.moved',
        repository,
        subject: tag,
        payload: { tag, digest, previous },
        meta,
      });
      await this.closeLifetime(tx, repositoryId, tag, event.seq);
      // The new period starts exactly where the closed one ended, so no instant falls between two periods.
      await tx
        .insertInto('tag_lifetimes')
        .values({
          repository_id: repositoryId,
          tag,
          digest,
          started_at: sql<Date>`coalesce((SELECT ended_at FROM tag_lifetimes WHERE repository_id = ${repositoryId} AND tag = ${tag} AND ended_seq = ${event.seq}), clock_timestamp())`,
          started_seq: event.seq,
        })
        .execute();
      return;
    }
    throw new ContendedError(`failed to move tag ${tag}: it kept being deleted concurrently`);
  }

  /**
   * Ends the tag's open period. The clock is read under the tag's lock, after the previous holder committed, so
   * periods follow each other in lock order; transaction start times (now()) would not.
   */
  private async closeLifetime(tx: Tx, repositoryId: number, tag: string, seq: number): Promise<void> {
    await tx
      .updateTable('tag_lifetimes')
      .set({ ended_at: sql<Date>`greatest(clock_timestamp(), started_at)`, ended_seq: seq })
      .where('repository_id', '=', repositoryId)
      .where('tag', '=', tag)
      .where('ended_at', 'is', null)
      .execute();
  }

  /** The manifest's metadata, without its bytes: for HEAD. */
  async stat(repository: string, reference: string): Promise<ManifestInfo> {
    const { content: _content, ...info } = await this.lookup(repository, reference, false);
    return info;
  }

  async get(repository: string, reference: string): Promise<StoredManifest> {
    return this.lookup(repository, reference, true);
  }

  private async lookup(repository: string, reference: string, withContent: boolean): Promise<StoredManifest> {
    assertName(repository);
    const target = parseReference(reference);
    if (target === null) throw new RegistryError('MANIFEST_UNKNOWN', { reference });
    const repositoryId = await this.repositories.find(repository);
    if (repositoryId === null) throw new RegistryError('MANIFEST_UNKNOWN', { reference });
    const row =
      'tag' in target
        ? await this.reads.tag[withContent ? 'get' : 'head'].find({ repositoryId, key: target.tag })
        : await this.reads.digest[withContent ? 'get' : 'head'].find({
            repositoryId,
            key: target.digest.digest,
          });
    if (!row) throw new RegistryError('MANIFEST_UNKNOWN', { reference });
    return {
      digest: row.digest,
      mediaType: row.media_type,
      size: row.size,
      content: row.content ?? Buffer.alloc(0),
    };
  }

  /**
   * By digest: removes the manifest, its references and every tag on it. Indexes that list it keep their rows,
   * as in the reference registry. By tag: removes that tag only.
   */
  async delete(repository: string, reference: string, meta: RequestMeta): Promise<void> {
    const target = parseReference(reference);
    const repositoryId = await this.repositories.find(repository);
    if (target === null || repositoryId === null) throw new RegistryError('MANIFEST_UNKNOWN', { reference });
    const removed = await retryContended(() =>
      this.db
        .transaction()
        .execute(async (tx) =>
          'tag' in target
            ? this.deleteTag(tx, repositoryId, repository, target.tag, meta)
            : this.deleteManifest(tx, repositoryId, repository, target.digest.digest, meta),
        ),
    );
    if (!removed) throw new RegistryError('MANIFEST_UNKNOWN', { reference });
  }

  private async deleteTag(
    tx: Tx,
    repositoryId: number,
    repository: string,
    tag: string,
    meta: RequestMeta,
  ): Promise<boolean> {
    const row = await tx
      .deleteFrom('tags')
      .where('repository_id', '=', repositoryId)
      .where('name', '=', tag)
      .returning('digest')
      .executeTakeFirst();
    if (!row) return false;
    await this.tagDeleted(tx, repositoryId, repository, tag, row.digest, meta);
    return true;
  }

  private async tagDeleted(
    tx: Tx,
    repositoryId: number,
    repository: string,
    tag: string,
    digest: string,
    meta: RequestMeta,
  ): Promise<void> {
    const event = await this.events.append(tx, {
      type: 'tag.deleted',
      repository,
      subject: tag,
      payload: { tag, digest },
      meta,
    });
    await this.closeLifetime(tx, repositoryId, tag, event.seq);
  }

  private async deleteManifest(
    tx: Tx,
    repositoryId: number,
    repository: string,
    digest: string,
    meta: RequestMeta,
  ): Promise<boolean> {
    // Locked first, so a push that would tag it either finished before (its tag is seen below) or waits.
    const row = await tx
      .selectFrom('manifests')
      .select('digest')
      .where('repository_id', '=', repositoryId)
      .where('digest', '=', digest)
      .forUpdate()
      .executeTakeFirst();
    if (!row) return false;
    const tags = await tx
      .deleteFrom('tags')
      .where('repository_id', '=', repositoryId)
      .where('digest', '=', digest)
      .returning('name')
      .execute();
    const names = tags.map((t) => t.name).sort();
    for (const tag of names) await this.tagDeleted(tx, repositoryId, repository, tag, digest, meta);
    await tx
      .deleteFrom('manifests')
      .where('repository_id', '=', repositoryId)
      .where('digest', '=', digest)
      .execute();
    await this.events.append(tx, {
      type: 'manifest.deleted',
      repository,
      subject: digest,
      payload: { digest, tags: names },
      meta,
    });
    return true;
  }
}
