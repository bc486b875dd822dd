import { assertName, MEDIA_TYPE, parseDigest, RegistryError } from '@strata/oci';
import type { ManifestStore } from './stores/manifest.store';
import type { RepositoryStore } from './stores/repository.store';
import type { TagStore } from './stores/tag.store';

/** The most entries one page holds, whatever `n` asks for; the Link header leads to the rest. */
export const MAX_PAGE_SIZE = 1000;
/** Names read at most for one filtered catalog page. */
const MAX_CATALOG_SCAN = 10_000;

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
    private readonly repositories: RepositoryStore,
    private readonly tagStore: TagStore,
    private readonly manifests: ManifestStore,
  ) {}

  async tags(repository: string, page: PageRequest): Promise<Page> {
    const repositoryId = await this.repositories.find(repository);
    if (repositoryId === null) throw new RegistryError('NAME_UNKNOWN', { name: repository });
    if (page.limit === 0) return { items: [], limit: 0, next: null };
    return toPage(await this.tagStore.list(repositoryId, page.last, page.limit + 1), page.limit);
  }

  /**
   * Repositories holding at least one manifest or linked blob; with `visible`, only those it accepts (the ones
   * the caller may pull), read in batches until the page is full or the names run out.
   */
  async repositoryNames(page: PageRequest, visible?: (name: string) => boolean): Promise<Page> {
    if (page.limit === 0) return { items: [], limit: 0, next: null };
    if (!visible) return toPage(await this.repositories.list(page.last, page.limit + 1), page.limit);
    const shown: string[] = [];
    let last = page.last;
    const batch = Math.max(page.limit + 1, 100);
    for (let scanned = 0; ; ) {
      const names = await this.repositories.list(last, batch);
      for (const n of names) if (visible(n)) shown.push(n);
      if (shown.length > page.limit || names.length < batch) break;
      last = names[names.length - 1]!;
      scanned += names.length;
      // A caller who may see few names does not make one request read the whole table: the page ends here, shorter,
      // and its Link continues after the last name read.
      if (scanned >= MAX_CATALOG_SCAN) return { items: shown, limit: page.limit, next: last };
    }
    return toPage(shown.slice(0, page.limit + 1), page.limit);
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
    const rows = await this.manifests.referrers(repository, digest, matchable.length > 0 ? matchable : null);
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
