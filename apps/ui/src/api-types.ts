// The JSON the UI reads from /api/v1 (apps/registry/src/api/api.controller.ts answers with exactly these shapes).
// Times are ISO 8601 strings (UTC); sizes are bytes. Errors come as the OCI envelope
// {"errors":[{"code","message","detail"}]} with the HTTP status of the error (401 with auth on and no token).

export interface Session {
  /** Whether STRATA_AUTH=token is on: the UI then logs in at POST /auth/token before anything else. */
  readonly auth: boolean;
  /** The account the request came as; null when anonymous (or when auth is off). */
  readonly user: string | null;
  /** Whether visitors who are not logged in may browse what anonymous pulls allow (STRATA_ANONYMOUS_PULL). */
  readonly anonymous: boolean;
  /** Whether the account may see every repository and the whole audit log (always true with auth off). */
  readonly admin: boolean;
  /** host[:port] to put in the pull lines (`docker pull <registry>/<repository>:<tag>`). */
  readonly registry: string;
}

export interface RepositorySummary {
  readonly name: string;
  readonly tags: number;
  /** Bytes of the blobs linked to the repository and of its manifests. */
  readonly size: number;
  /** When a manifest was last pushed or a tag last moved there; null when it holds only blobs. */
  readonly lastPush: string | null;
}

/** A page: `next` is the `after` of the next page, null on the last. */
export interface Page<T> {
  readonly items: T[];
  readonly next: string | null;
}

export interface Platform {
  readonly os: string;
  readonly architecture: string;
  readonly variant?: string;
}

export interface TagSummary {
  readonly name: string;
  readonly digest: string;
  readonly mediaType: string;
  /** The manifest, its config and layers (for an index: with every child's). */
  readonly size: number;
  /** For an index: the platforms of its children; null for an image (and an index larger than 64 KiB). */
  readonly platforms: Platform[] | null;
  /** When the tag came to point at this digest, and who did that. */
  readonly pushedAt: string;
  readonly pushedBy: string | null;
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

export interface Referrer extends Descriptor {
  readonly artifactType: string | null;
  readonly annotations: Record<string, string>;
}

export interface Image {
  readonly repository: string;
  readonly digest: string;
  readonly mediaType: string;
  readonly artifactType: string | null;
  /** The manifest's own size. */
  readonly size: number;
  /** The manifest and everything it refers to. */
  readonly totalSize: number;
  readonly pushedAt: string | null;
  readonly pushedBy: string | null;
  /** Tags pointing at it now. */
  readonly tags: string[];
  /** An image: its config blob, read and summarised (null when not a container image config). */
  readonly config: (Descriptor & { readonly summary: ImageConfig | null }) | null;
  /** An image: its layers, base first. */
  readonly layers: Descriptor[];
  /** An index: its children. */
  readonly manifests: (Descriptor & { readonly platform: Platform | null })[];
  readonly subject: string | null;
  readonly annotations: Record<string, string>;
  readonly referrers: Referrer[];
}

export interface TimelineEntry {
  readonly digest: string;
  readonly startedAt: string;
  /** null while the tag still points there. */
  readonly endedAt: string | null;
  readonly startedBy: string;
  readonly endedBy: string | null;
  /** 'moved' or 'deleted'; null while current. */
  readonly endReason: 'moved' | 'deleted' | null;
  readonly startedSeq: number;
}

/** Every period of a tag, newest first. */
export interface Timeline {
  readonly repository: string;
  readonly tag: string;
  readonly items: TimelineEntry[];
}

export interface LayerDiff {
  readonly from: string;
  readonly to: string;
  /** Layers of `to` that `from` did not have, in `to`'s order. */
  readonly added: Descriptor[];
  /** Layers of `from` that `to` does not have. */
  readonly removed: Descriptor[];
  /** Layers both have. */
  readonly kept: Descriptor[];
}

export interface AuditEvent {
  /** The event's position in the log. */
  readonly seq: number;
  readonly at: string;
  readonly actor: string;
  readonly action: string;
  readonly repository: string | null;
  readonly subject: string | null;
  readonly digest: string | null;
  readonly tag: string | null;
  readonly previousDigest: string | null;
  readonly size: number | null;
  readonly requestId: string | null;
  readonly clientAddr: string | null;
  readonly userAgent: string | null;
}

/** GET /api/v1/audit: newest first; `next` is the `before` of the next (older) page (a seq, as a string). */
export type AuditPage = Page<AuditEvent>;
