import { sql } from 'kysely';
import type { Db } from '@strata/db';
import { assertName, MEDIA_TYPE, parseDigest, RegistryError } from '@strata/oci';
import type { RepositoryStore } from './repository.store';

/** The most entries one page holds, whatever `n` asks for; the Link header leads to the rest. */
export const MAX_PAGE_SIZE = 1000;

export interface PageRequest {
  readonly limit: number;
  readonly last: string | null;
}

export interface Page {
  readonly items: string[];
  /** The page size used, for the next page's link. */
  readonly limit: number;
  /** The `last` of the next page; null when this page is the end. */
  readonly next: string | null;
}

/** `?n=&last=` of the spec's pagination. */
export function parsePage(n: string | undefined, last: string | undefined): PageRequest {
  let limit = MAX_PAGE_SIZE;
  if (n !== undefined) {
    if (!/^\d{1,9}$/.test(n)) throw new RegistryError('PAGINATION_NUMBER_INVALID', { n });
    limit = Math.min(Number(n), MAX_PAGE_SIZE);
  }
  // PostgreSQL text cannot carry U+0000, and no name or tag holds one. Under bytewise order the names after
  // "a\0b" are exactly those after "a", so the marker is cut at its first NUL instead of being refused.
  const marker = last?.split('\0', 1)[0] ?? '';
  return { limit, last: marker === '' ? null : marker };
}

function toPage(rows: string[], limit: number): Page {
  const more = rows.length > limit;
  const items = more ? rows.slice(0, limit) : rows;
  return { items, limit, next: more ? items[items.length - 1]! : null };
}

export interface ReferrerDescriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly artifactType?: string;
  readonly annotations?: Record<string, string>;
}

export interface ReferrersIndex {
  readonly schemaVersion: 2;
  readonly mediaType: typeof MEDIA_TYPE.OCI_INDEX;
  readonly manifests: ReferrerDescriptor[];
}

/**
 * Read-only listings over the projections: tags of a repository, repositories of the registry, referrers of a
 * manifest. Names sort bytewise (COLLATE "C") as the spec's lexical order, whatever the database's locale.
 */
export class CatalogService {
  constructor(
    private readonly db: Db,
    private readonly repositories: RepositoryStore,
  ) {}

  async tags(repository: string, page: PageRequest): Promise<Page> {
    const repositoryId = await this.repositories.find(repository);
    if (repositoryId === null) throw new RegistryError('NAME_UNKNOWN', { name: repository });
    if (page.limit === 0) return { items: [], limit: 0, next: null };
    const rows = await this.db
      .selectFrom('tags')
      .select('name')
      .where('repository_id', '=', repositoryId)
      .$if(page.last !== null, (q) => q.where(sql<string>`name COLLATE "C"`, '>', page.last!))
      .orderBy(sql`name COLLATE "C"`)
      .limit(page.limit + 1)
      .execute();
    return toPage(
      rows.map((r) => r.name),
      page.limit,
    );
  }

  /** Repositories holding at least one manifest or linked blob. */
  async repositoryNames(page: PageRequest): Promise<Page> {
    if (page.limit === 0) return { items: [], limit: 0, next: null };
    const rows = await this.db
      .selectFrom('repositories as r')
      .select('r.name')
      .where((eb) =>
        eb.or([
          eb.exists(
            eb.selectFrom('manifests as m').select('m.digest').whereRef('m.repository_id', '=', 'r.id'),
          ),
          eb.exists(
            eb
              .selectFrom('repository_blobs as rb')
              .select('rb.digest')
              .whereRef('rb.repository_id', '=', 'r.id'),
          ),
        ]),
      )
      .$if(page.last !== null, (q) => q.where(sql<string>`r.name COLLATE "C"`, '>', page.last!))
      .orderBy(sql`r.name COLLATE "C"`)
      .limit(page.limit + 1)
      .execute();
    return toPage(
      rows.map((r) => r.name),
      page.limit,
    );
  }

  /**
   * Manifests of `repository` whose subject is `digest`, as an image index; optionally only those of the given
   * artifact types. An unknown subject or repository has no referrers, which is not an error.
   */
  async referrers(
    repository: string,
    digest: string,
    artifactTypes: readonly string[],
  ): Promise<ReferrersIndex> {
    assertName(repository);
    parseDigest(digest);
    // No stored artifact type holds U+0000 (manifests with one are refused), and PostgreSQL text cannot carry
    // it: such a filter matches nothing, and when it is the only one, the answer is an empty index.
    const matchable = artifactTypes.filter((t) => !t.includes('\0'));
    if (matchable.length === 0 && artifactTypes.length > 0)
      return { schemaVersion: 2, mediaType: MEDIA_TYPE.OCI_INDEX, manifests: [] };
    const rows = await this.db
      .selectFrom('manifests as m')
      .innerJoin('repositories as r', 'r.id', 'm.repository_id')
      .select(['m.media_type', 'm.digest', 'm.size', 'm.artifact_type', 'm.annotations'])
      .where('r.name', '=', repository)
      .where('m.subject_digest', '=', digest)
      .$if(matchable.length > 0, (q) => q.where('m.artifact_type', 'in', matchable))
      .orderBy('m.created_at')
      .orderBy('m.digest')
      .execute();
    return {
      schemaVersion: 2,
      mediaType: MEDIA_TYPE.OCI_INDEX,
      manifests: rows.map((r) => ({
        mediaType: r.media_type,
        digest: r.digest,
        size: r.size,
        ...(r.artifact_type === null ? {} : { artifactType: r.artifact_type }),
        ...(r.annotations === null ? {} : { annotations: r.annotations }),
      })),
    };
  }
}
