import { createHash } from 'node:crypto';
import { immutableRefusal, retryableConflict } from '@strata/db';
import type { RequestMeta } from '@strata/events';
import {
  assertName,
  isValidTag,
  looksLikeDigest,
  type ParsedDigest,
  parseDigest,
  parseManifest,
  RegistryError,
} from '@strata/oci';
import type { ManifestStore, PushOutcome } from '../stores/manifest.store';
import type { RepositoryStore } from '../stores/repository.store';
import type { TagStore } from '../stores/tag.store';

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

/** Whole write attempts for one manifest request when PostgreSQL rolls it back to resolve a conflict. */
const WRITE_ATTEMPTS = 5;

/**
 * Every write is one statement, whose functions (migration 0009) take their locks in one order, so concurrent
 * writers wait for each other rather than deadlock. Should PostgreSQL still roll one back (a serialization
 * failure, or a deadlock with something outside that order), it is tried again a few times.
 */
async function retryConflicts<T>(write: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await write();
    } catch (e) {
      if (!retryableConflict(e) || attempt >= WRITE_ATTEMPTS) throw e;
      await new Promise((r) => setTimeout(r, attempt * (2 + Math.random() * 8)));
    }
  }
}

function contended(what: string): RegistryError {
  return new RegistryError('UNAVAILABLE', {
    reason: `${what} kept being deleted concurrently; try again`,
    retryAfter: 1,
  });
}

function refusal(outcome: Extract<PushOutcome, { status: 'missing' | 'size' }>): RegistryError {
  if (outcome.status === 'size') {
    return new RegistryError('MANIFEST_INVALID', {
      reason: 'descriptor size does not match the stored content',
      digest: outcome.digest,
      declared: outcome.declared,
      stored: outcome.stored,
    });
  }
  return missing(outcome.kind, outcome.digest);
}

function missing(kind: string, digest: string): RegistryError {
  return kind === 'manifest'
    ? new RegistryError('MANIFEST_UNKNOWN', {
        digest,
        reason: 'the index references a manifest not in this repository',
      })
    : new RegistryError('MANIFEST_BLOB_UNKNOWN', { digest });
}

/**
 * Manifests and the tags on them. A push is one statement: its references checked (and held) in the repository,
 * the manifest stored unless it is, the tag moved, with their events. A tag's row is the lock that serializes
 * everything done to the tag, so its lifetimes never overlap; a manifest's row is share-locked by pushes that
 * rely on it and update-locked by its deletion.
 */
export class ManifestService {
  constructor(
    private readonly manifests: ManifestStore,
    private readonly tags: TagStore,
    private readonly repositories: RepositoryStore,
  ) {}

  /** Stores the manifest `bytes` (read by the HTTP layer, at most MAX_MANIFEST_BYTES) under `reference`. */
  async put(
    repository: string,
    reference: string,
    contentType: string | null | undefined,
    bytes: Buffer,
    meta: RequestMeta,
  ): Promise<PushedManifest> {
    assertName(repository);
    const target = parseReference(reference);
    if (target === null) throw new RegistryError('TAG_INVALID', { tag: reference });
    const algorithm = 'digest' in target ? target.digest.algorithm : 'sha256';
    const digest = `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
    if ('digest' in target && target.digest.digest !== digest) {
      throw new RegistryError('DIGEST_INVALID', { expected: target.digest.digest, actual: digest });
    }
    const manifest = parseManifest(bytes, contentType);
    const first = manifest.references[0];
    if (first && (await this.repositories.find(repository)) === null) throw missing(first.kind, first.digest);
    const repositoryId = await this.repositories.ensure(repository);
    const tag = 'tag' in target ? target.tag : null;
    // 'contended': the manifest or the tag kept being deleted under the push (five times inside the function). What
    // it stored meanwhile is kept (a manifest, untagged), so trying again, after a pause, finishes the push.
    const push = () =>
      this.unlessImmutable(repository, 'move', digest, meta, () =>
        retryConflicts(() =>
          this.manifests.push({ repositoryId, repository, digest, manifest, bytes, tag, meta }),
        ),
      );
    let outcome = await push();
    for (let attempt = 1; outcome.status === 'contended' && attempt < WRITE_ATTEMPTS; attempt++) {
      await new Promise((r) => setTimeout(r, attempt * (2 + Math.random() * 8)));
      outcome = await push();
    }
    if (outcome.status === 'contended') throw contended(`manifest ${digest} or tag ${tag ?? ''}`);
    if (outcome.status === 'missing' || outcome.status === 'size') throw refusal(outcome);
    return { digest, subject: manifest.subject };
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
        ? await this.manifests.find(repositoryId, 'tag', target.tag, withContent)
        : await this.manifests.find(repositoryId, 'digest', target.digest.digest, withContent);
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
    const removed = await this.unlessImmutable(
      repository,
      'delete',
      'tag' in target ? null : target.digest.digest,
      meta,
      () =>
        retryConflicts(() =>
          'tag' in target
            ? this.tags.delete(repositoryId, repository, target.tag, meta)
            : this.manifests.delete(repositoryId, repository, target.digest.digest, meta),
        ),
    );
    if (!removed) throw new RegistryError('MANIFEST_UNKNOWN', { reference });
  }

  /**
   * Runs a write that an immutable-tag rule may refuse (the write functions raise ST001 and roll it back): the
   * refusal is recorded as tag.change_refused, and answered DENIED naming the rule.
   */
  private async unlessImmutable<T>(
    repository: string,
    change: 'move' | 'delete',
    digest: string | null,
    meta: RequestMeta,
    write: () => Promise<T>,
  ): Promise<T> {
    try {
      return await write();
    } catch (e) {
      const refusal = immutableRefusal(e);
      if (!refusal) throw e;
      await this.tags.refused(repository, change, digest, refusal, meta);
      throw new RegistryError('TAG_IMMUTABLE', {
        repository,
        tag: refusal.tag,
        change,
        rule: { id: refusal.rule, repository: refusal.repository_pattern, tag: refusal.tag_pattern },
      });
    }
  }
}
