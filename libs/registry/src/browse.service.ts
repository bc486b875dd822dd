import { assertName, MEDIA_TYPE, parseDigest, RegistryError } from '@strata/oci';
import type { BlobService } from './blob.service';
import type { CatalogService } from './catalog.service';
import type { ManifestService } from './manifests/manifest.service';
import type { AuditFilter, BrowseStore, TagRow, TimelineRow, VisibleFilter } from './stores/browse.store';
import type { RepositoryStore } from './stores/repository.store';

/** The most entries of one page of the UI's API. */
export const MAX_BROWSE_PAGE = 100;
/** A config blob larger than this is not read for its summary (real ones are a few KiB). */
const MAX_CONFIG_BYTES = 1024 * 1024;
/** Periods of one tag's timeline shown at most. */
const MAX_TIMELINE = 1000;

/**
 * What the caller may see: `visible` for one name, `filter` the same as SQL (null: everything, with
 * authentication off or for an administrator), and whether it is an administrator.
 */
export interface Caller {
  readonly admin: boolean;
  readonly visible: (repository: string) => boolean;
  readonly filter: VisibleFilter | null;
}

export interface BrowsePage<T> {
  readonly items: T[];
  readonly next: string | null;
}

export interface Platform {
  readonly os: string;
  readonly architecture: string;
  readonly variant?: string;
}

export interface Descriptor {
  readonly digest: string;
  readonly mediaType: string;
  readonly size: number;
}

export interface ImageConfig {
  readonly created: string | null;
  readonly os: string | null;
  readonly architecture: string | null;
  readonly entrypoint: string[] | null;
  readonly cmd: string[] | null;
  readonly env: string[];
  readonly workingDir: string | null;
  readonly user: string | null;
  readonly labels: Record<string, string>;
  readonly exposedPorts: string[];
}

export interface ImageView {
  readonly repository: string;
  readonly digest: string;
  readonly mediaType: string;
  readonly artifactType: string | null;
  readonly size: number;
  readonly totalSize: number;
  readonly pushedAt: string | null;
  readonly pushedBy: string | null;
  readonly tags: string[];
  readonly config: (Descriptor & { readonly summary: ImageConfig | null }) | null;
  readonly layers: Descriptor[];
  readonly manifests: (Descriptor & { readonly platform: Platform | null })[];
  readonly subject: string | null;
  readonly annotations: Record<string, string>;
  readonly referrers: (Descriptor & {
    readonly artifactType: string | null;
    readonly annotations: Record<string, string>;
  })[];
}

export interface LayerDiff {
  readonly from: string;
  readonly to: string;
  readonly added: Descriptor[];
  readonly removed: Descriptor[];
  readonly kept: Descriptor[];
}

// Stored manifests were validated when pushed; these readers only pick out what the views show.
type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const strings = (v: unknown): string[] | null =>
  Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : null;
const stringMap = (v: unknown): Record<string, string> =>
  isObject(v)
    ? Object.fromEntries(Object.entries(v).filter((e): e is [string, string] => typeof e[1] === 'string'))
    : {};

function descriptor(v: unknown): Descriptor | null {
  if (!isObject(v) || typeof v.digest !== 'string' || typeof v.size !== 'number') return null;
  return { digest: v.digest, mediaType: str(v.mediaType) ?? '', size: v.size };
}

function platform(v: unknown): Platform | null {
  if (!isObject(v) || typeof v.os !== 'string' || typeof v.architecture !== 'string') return null;
  return typeof v.variant === 'string'
    ? { os: v.os, architecture: v.architecture, variant: v.variant }
    : { os: v.os, architecture: v.architecture };
}

function parseJson(bytes: Buffer): Json | null {
  try {
    const v: unknown = JSON.parse(bytes.toString('utf8'));
    return isObject(v) ? v : null;
  } catch {
    return null;
  }
}

function children(content: Buffer | null): (Descriptor & { platform: Platform | null })[] {
  const json = content && parseJson(content);
  if (!json || !Array.isArray(json.manifests)) return [];
  return json.manifests.flatMap((m: unknown) => {
    const d = descriptor(m);
    return d ? [{ ...d, platform: isObject(m) ? platform(m.platform) : null }] : [];
  });
}

/** What an image config says about how the image runs, from its JSON (null when it is not one). */
function summarise(bytes: Buffer): ImageConfig | null {
  const json = parseJson(bytes);
  if (!json) return null;
  const c = isObject(json.config) ? json.config : {};
  return {
    created: str(json.created),
    os: str(json.os),
    architecture: str(json.architecture),
    entrypoint: strings(c.Entrypoint),
    cmd: strings(c.Cmd),
    env: strings(c.Env) ?? [],
    workingDir: str(c.WorkingDir) || null,
    user: str(c.User) || null,
    labels: stringMap(c.Labels),
    exposedPorts: isObject(c.ExposedPorts) ? Object.keys(c.ExposedPorts) : [],
  };
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
  return Buffer.concat(parts);
}

const iso = (d: Date | null): string | null => (d === null ? null : d.toISOString());

/** `limit` of a page: 1 to MAX_BROWSE_PAGE, 50 when not given. */
export function parseBrowseLimit(v: string | undefined, fallback = 50): number {
  if (v === undefined) return fallback;
  if (!/^\d{1,9}$/.test(v) || Number(v) === 0) throw new RegistryError('PAGINATION_NUMBER_INVALID', { n: v });
  return Math.min(Number(v), MAX_BROWSE_PAGE);
}

/**
 * What the web UI shows, read through the same services as the registry API: repositories with their sizes,
 * tags with who pushed them, an image's layers, config and referrers, a tag's timeline and the audit log.
 * Callers pass which repositories the caller may pull; nothing else is shown or counted.
 */
export class BrowseService {
  constructor(
    private readonly store: BrowseStore,
    private readonly repositories: RepositoryStore,
    private readonly manifests: ManifestService,
    private readonly blobs: BlobService,
    private readonly catalog: CatalogService,
  ) {}

  /** A page of the repositories the caller may see (filtered in SQL, so pages are full and cursors are seen names). */
  async repositoryPage(q: string, after: string, limit: number, caller: Caller) {
    const rows = (await this.store.repositories(after, q, limit + 1, caller.filter)).filter((r) =>
      caller.visible(r.name),
    );
    const page = rows.slice(0, limit);
    const summaries = new Map((await this.store.summaries(page.map((r) => r.id))).map((s) => [s.id, s]));
    return {
      items: page.map((r) => {
        const s = summaries.get(r.id);
        return { name: r.name, tags: s?.tags ?? 0, size: s?.size ?? 0, lastPush: iso(s?.last_push ?? null) };
      }),
      next: rows.length > limit ? page[page.length - 1]!.name : null,
    };
  }

  async tagPage(repository: string, q: string, after: string, limit: number) {
    const id = await this.repositoryId(repository);
    const rows = await this.store.tags(id, after, q, limit + 1);
    const page = rows.slice(0, limit);
    return {
      items: page.map((t: TagRow) => ({
        name: t.name,
        digest: t.digest,
        mediaType: t.media_type,
        size: t.size,
        platforms:
          t.index_content === null
            ? null
            : children(t.index_content).flatMap((c) => (c.platform ? [c.platform] : [])),
        pushedAt: iso(t.pushed_at),
        pushedBy: t.pushed_by,
      })),
      next: rows.length > limit ? page[page.length - 1]!.name : null,
    };
  }

  async image(repository: string, reference: string): Promise<ImageView> {
    const id = await this.repositoryId(repository);
    const m = await this.manifests.get(repository, reference);
    const json = parseJson(m.content) ?? {};
    const isIndex = m.mediaType === MEDIA_TYPE.OCI_INDEX || m.mediaType === MEDIA_TYPE.DOCKER_MANIFEST_LIST;
    const config = isIndex ? null : descriptor(json.config);
    const layers =
      isIndex || !Array.isArray(json.layers) ? [] : json.layers.flatMap((l) => descriptor(l) ?? []);
    const manifests = isIndex ? children(m.content) : [];
    const [tags, pushed, referrers, summary] = await Promise.all([
      this.store.tagsAt(id, m.digest),
      this.store.pushed(repository, m.digest),
      this.catalog.referrers(repository, m.digest, []),
      config ? this.configSummary(repository, config) : Promise.resolve(null),
    ]);
    const listed = [...(config ? [config] : []), ...layers, ...manifests];
    return {
      repository,
      digest: m.digest,
      mediaType: m.mediaType,
      artifactType: str(json.artifactType),
      size: m.size,
      totalSize: listed.reduce((sum, d) => sum + d.size, m.size),
      pushedAt: iso(pushed?.pushed_at ?? null),
      pushedBy: pushed?.pushed_by ?? null,
      tags,
      config: config ? { ...config, summary } : null,
      layers,
      manifests,
      subject: isObject(json.subject) ? str(json.subject.digest) : null,
      annotations: stringMap(json.annotations),
      referrers: referrers.manifests.map((r) => ({
        digest: r.digest,
        mediaType: r.mediaType,
        size: r.size,
        artifactType: r.artifactType ?? null,
        annotations: r.annotations ?? {},
      })),
    };
  }

  /** Every period of the tag, newest first; MANIFEST_UNKNOWN when the tag never existed. */
  async timeline(repository: string, tag: string) {
    await this.repositoryId(repository);
    const rows = await this.store.timeline(repository, tag, MAX_TIMELINE);
    if (rows.length === 0) throw new RegistryError('MANIFEST_UNKNOWN', { tag });
    return {
      repository,
      tag,
      items: rows.map((r: TimelineRow) => ({
        digest: r.digest,
        startedAt: r.started_at.toISOString(),
        endedAt: iso(r.ended_at),
        startedBy: r.started_by,
        endedBy: r.ended_by,
        endReason: r.end_reason,
        startedSeq: r.started_seq,
      })),
    };
  }

  /**
   * The layers two manifests of the repository differ by, from the event log: a manifest deleted since is still
   * compared, as the timeline still shows it.
   */
  async diff(repository: string, from: string, to: string): Promise<LayerDiff> {
    parseDigest(from);
    parseDigest(to);
    await this.repositoryId(repository);
    const [a, b] = await Promise.all([this.layersOf(repository, from), this.layersOf(repository, to)]);
    const inA = new Set(a.map((l) => l.digest));
    const inB = new Set(b.map((l) => l.digest));
    return {
      from,
      to,
      added: b.filter((l) => !inA.has(l.digest)),
      removed: a.filter((l) => !inB.has(l.digest)),
      kept: b.filter((l) => inA.has(l.digest)),
    };
  }

  /**
   * The newest events first, of repositories the caller may see (filtered in SQL). Who sent them (address, user
   * agent, request id) is shown to administrators only.
   */
  async audit(filter: AuditFilter, limit: number, caller: Caller) {
    if (filter.repository !== null && !caller.visible(filter.repository)) return { items: [], next: null };
    const rows = (await this.store.audit(filter, limit + 1, caller.filter)).filter(
      (r) => caller.filter === null || (r.repository !== null && caller.visible(r.repository)),
    );
    const page = rows.slice(0, limit);
    return {
      items: page.map((r) => ({
        seq: r.seq,
        at: r.at.toISOString(),
        actor: r.actor,
        action: r.action,
        repository: r.repository,
        subject: r.subject,
        digest: r.digest,
        tag: r.tag,
        previousDigest: r.previous_digest,
        size: r.size,
        requestId: caller.admin ? r.request_id : null,
        clientAddr: caller.admin ? r.client_addr : null,
        userAgent: caller.admin ? r.user_agent : null,
      })),
      next: rows.length > limit ? String(page[page.length - 1]!.seq) : null,
    };
  }

  private async repositoryId(repository: string): Promise<number> {
    assertName(repository);
    const id = await this.repositories.find(repository);
    if (id === null) throw new RegistryError('NAME_UNKNOWN', { name: repository });
    return id;
  }

  private async layersOf(repository: string, digest: string): Promise<Descriptor[]> {
    const pushed = await this.store.pushed(repository, digest);
    if (!pushed) throw new RegistryError('MANIFEST_UNKNOWN', { digest });
    return (
      (pushed.references ?? [])
        // An image's layers; an index's child manifests.
        .filter((r) => r.kind !== 'config')
        .map((r) => ({ digest: r.digest, mediaType: '', size: r.size }))
    );
  }

  private async configSummary(repository: string, config: Descriptor): Promise<ImageConfig | null> {
    if (config.size > MAX_CONFIG_BYTES) return null;
    try {
      const blob = await this.blobs.stat(repository, config.digest);
      return summarise(await readAll(await this.blobs.open(blob)));
    } catch (e) {
      // An artifact's config may be a blob never pushed (the empty descriptor is allowed to be absent).
      if (e instanceof RegistryError && e.code === 'BLOB_UNKNOWN') return null;
      throw e;
    }
  }
}
