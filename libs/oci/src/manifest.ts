import { RegistryError } from './errors';
import { parseDigest } from './grammar';

export const MEDIA_TYPE = {
  OCI_MANIFEST: 'application/vnd.oci.image.manifest.v1+json',
  OCI_INDEX: 'application/vnd.oci.image.index.v1+json',
  OCI_CONFIG: 'application/vnd.oci.image.config.v1+json',
  OCI_EMPTY: 'application/vnd.oci.empty.v1+json',
  DOCKER_MANIFEST: 'application/vnd.docker.distribution.manifest.v2+json',
  DOCKER_MANIFEST_LIST: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DOCKER_SCHEMA1: 'application/vnd.docker.distribution.manifest.v1+json',
  DOCKER_SCHEMA1_SIGNED: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;

/** Manifests larger than this are refused before they are fully read, as the reference registry does. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

const IMAGE_MANIFEST_TYPES: ReadonlySet<string> = new Set([
  MEDIA_TYPE.OCI_MANIFEST,
  MEDIA_TYPE.DOCKER_MANIFEST,
]);
const INDEX_TYPES: ReadonlySet<string> = new Set([MEDIA_TYPE.OCI_INDEX, MEDIA_TYPE.DOCKER_MANIFEST_LIST]);
const SCHEMA1_TYPES: ReadonlySet<string> = new Set([
  MEDIA_TYPE.DOCKER_SCHEMA1,
  MEDIA_TYPE.DOCKER_SCHEMA1_SIGNED,
]);
/** Content types that say nothing about the manifest, sent by clients that leave the choice to the body. */
const GENERIC_TYPES: ReadonlySet<string> = new Set([
  '',
  'application/json',
  'application/octet-stream',
  '*/*',
]);

export const SUPPORTED_MANIFEST_TYPES: readonly string[] = [...IMAGE_MANIFEST_TYPES, ...INDEX_TYPES];

export type ManifestReferenceKind = 'config' | 'layer' | 'manifest';

export interface ManifestReference {
  readonly digest: string;
  readonly kind: ManifestReferenceKind;
  readonly size: number;
}

export interface ParsedManifest {
  readonly mediaType: string;
  /** The manifest's `artifactType`; for an image manifest without one, its config's media type (OCI referrers). */
  readonly artifactType: string | null;
  readonly subject: string | null;
  readonly annotations: Readonly<Record<string, string>> | null;
  /** Config first, then layers in order; or an index's children in order. */
  readonly references: readonly ManifestReference[];
}

interface Descriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
}

const invalid = (reason: string, extra?: Record<string, unknown>): RegistryError =>
  new RegistryError('MANIFEST_INVALID', { reason, ...extra });

/** `type/subtype` of a Content-Type header, lower-cased and without parameters; '' when absent. */
export function baseMediaType(contentType: string | null | undefined): string {
  return (contentType ?? '').split(';')[0]!.trim().toLowerCase();
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function optionalString(v: unknown, field: string): string | null {
  if (v === undefined) return null;
  if (typeof v !== 'string' || v === '') throw invalid(`${field} must be a non-empty string`);
  return v;
}

function annotationsOf(v: unknown, field: string): Record<string, string> | null {
  if (v === undefined) return null;
  if (!isObject(v)) throw invalid(`${field} must be an object of strings`);
  for (const [k, value] of Object.entries(v)) {
    if (typeof value !== 'string') throw invalid(`${field}.${k} must be a string`);
  }
  return v as Record<string, string>;
}

function descriptor(v: unknown, field: string): Descriptor {
  if (!isObject(v)) throw invalid(`${field} must be a descriptor object`);
  const { mediaType, digest, size } = v;
  if (typeof mediaType !== 'string' || mediaType === '')
    throw invalid(`${field}.mediaType must be a non-empty string`);
  if (typeof digest !== 'string') throw invalid(`${field}.digest must be a string`);
  try {
    parseDigest(digest);
  } catch (e) {
    // Inside a manifest a bad digest makes the manifest invalid; the URL's digest is another matter.
    if (e instanceof RegistryError) throw invalid(`${field}.digest is not a valid digest`, { digest });
    throw e;
  }
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw invalid(`${field}.size must be a non-negative integer`, { digest });
  }
  if (v.urls !== undefined && (!Array.isArray(v.urls) || !v.urls.every((u) => typeof u === 'string'))) {
    throw invalid(`${field}.urls must be an array of strings`, { digest });
  }
  annotationsOf(v.annotations, `${field}.annotations`);
  optionalString(v.artifactType, `${field}.artifactType`);
  return { mediaType, digest, size };
}

function descriptors(v: unknown, field: string): Descriptor[] {
  if (!Array.isArray(v)) throw invalid(`${field} must be an array of descriptors`);
  return v.map((d, i) => descriptor(d, `${field}[${i}]`));
}

/** A string PostgreSQL's text and jsonb cannot hold: with U+0000, or with half a UTF-16 surrogate pair. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const unstorable = (s: string): boolean => s.includes('\0') || LONE_SURROGATE.test(s);

/** Go's encoding/json refuses documents nested deeper than this; its clients could not read such a manifest. */
export const MAX_MANIFEST_DEPTH = 10_000;

/**
 * The names of every field Go's distribution code decodes from a manifest, an index or a descriptor. Go's
 * encoding/json matches a key to a struct field case-insensitively (`Layers` and `LAYERS` fill `layers`, the last
 * one written wins), so a case variant of one of these names means something to Go clients that JSON.parse does
 * not see.
 */
const STRUCT_FIELDS = [
  'schemaVersion',
  'mediaType',
  'artifactType',
  'config',
  'layers',
  'manifests',
  'subject',
  'annotations',
  'digest',
  'size',
  'urls',
  'data',
  'platform',
  'architecture',
  'os',
  'os.version',
  'os.features',
  'variant',
  'features',
];

/**
 * A key as Go's encoding/json folds it to match a field: ASCII upper-cased, and the four non-ASCII runes whose
 * simple case mapping lands in ASCII (ſ and ı fold to S and I, the Kelvin sign to K, İ to I). Other runes are
 * kept: no field name has them, so they cannot make a key match one.
 */
function goFold(key: string): string {
  return key.replace(/[a-z\u0130\u0131\u017f\u212a]/g, (c) => GO_FOLD_SPECIAL[c] ?? c.toUpperCase());
}

const GO_FOLD_SPECIAL: Record<string, string> = {
  '\u0130': 'I',
  '\u0131': 'I',
  '\u017f': 'S',
  '\u212a': 'K',
};

const FIELD_BY_FOLD = new Map(STRUCT_FIELDS.map((f) => [goFold(f), f]));

/** Keys of these fields hold maps (string to string), matched exactly by every decoder. */
const MAP_FIELDS = new Set(['annotations']);
/** Fields whose value is a struct, and arrays whose elements are. */
const STRUCT_VALUED = new Set(['config', 'subject', 'platform']);
const STRUCT_ARRAYS = new Set(['layers', 'manifests']);

/**
 * What an open container is to Go's decoder: a struct (its keys are matched to fields case-insensitively), an
 * array of structs, or anything else (a map, or a value no field takes, whose keys are matched exactly or not at
 * all).
 */
type Role = 'struct' | 'structs' | 'other';

interface Frame {
  readonly role: Role;
  /** The keys seen so far, for an object; null for an array. */
  readonly keys: Set<string> | null;
  /** The last key read, whose value comes next. */
  key: string;
}

function roleOf(parent: Frame | undefined, isObject: boolean): Role {
  if (!parent) return isObject ? 'struct' : 'other';
  if (parent.role === 'structs') return isObject ? 'struct' : 'other';
  if (parent.role !== 'struct' || MAP_FIELDS.has(parent.key)) return 'other';
  if (isObject) return STRUCT_VALUED.has(parent.key) ? 'struct' : 'other';
  return STRUCT_ARRAYS.has(parent.key) ? 'structs' : 'other';
}

/**
 * Refuses what JSON.parse accepts but Strata cannot store or other readers see differently, in one pass over the
 * text before it is parsed:
 * - nesting deeper than Go's decoder takes;
 * - a key written twice in one object (JSON.parse keeps the last, other decoders the first or either), so the
 *   bytes Strata serves mean one thing to every client;
 * - where Go decodes an object into a struct (the manifest, its descriptors and platforms), a key that is a case
 *   variant of a field's name (`Layers`): Go would read it as that field, JSON.parse as an unknown key;
 * - a string with U+0000 or a lone surrogate, which PostgreSQL's text and jsonb cannot hold and no manifest field
 *   needs. Only an escaped string can hold either: unescaped, JSON refuses U+0000 and UTF-8 a lone surrogate.
 * What is not JSON at all is left for JSON.parse to describe.
 */
function checkStructure(text: string): void {
  const open: Frame[] = [];
  let keyNext = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const start = i;
      let escaped = false;
      for (i++; i < text.length; i++) {
        const d = text.charCodeAt(i);
        if (d === 0x5c /* \ */) {
          escaped = true;
          i++;
        } else if (d === 0x22) break;
      }
      let value = text.slice(start + 1, i);
      if (escaped) {
        try {
          value = JSON.parse(text.slice(start, i + 1)) as string;
        } catch {
          return;
        }
        if (unstorable(value))
          throw invalid('manifest strings must not contain U+0000 or unpaired UTF-16 surrogates');
      }
      const frame = open[open.length - 1];
      if (keyNext && frame?.keys) {
        if (frame.keys.has(value)) throw invalid('a key appears twice in one object', { key: value });
        frame.keys.add(value);
        frame.key = value;
        if (frame.role === 'struct') {
          const field = FIELD_BY_FOLD.get(goFold(value));
          if (field !== undefined && field !== value)
            throw invalid('a key differs from a field name only in case', { key: value, field });
        }
      }
      keyNext = false;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      const isObject = c === 0x7b;
      open.push({
        role: roleOf(open[open.length - 1], isObject),
        keys: isObject ? new Set() : null,
        key: '',
      });
      if (open.length > MAX_MANIFEST_DEPTH)
        throw invalid('the manifest is nested too deeply', { maxDepth: MAX_MANIFEST_DEPTH });
      keyNext = isObject;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      open.pop();
      keyNext = false;
    } else if (c === 0x2c /* , */) {
      keyNext = open[open.length - 1]?.keys != null;
    } else if (c === 0x3a /* : */) {
      keyNext = false;
    }
  }
}

function parseJson(body: Buffer): Record<string, unknown> {
  let text: string;
  try {
    // ignoreBOM keeps a leading byte-order mark, so JSON.parse refuses it as Go's decoder does.
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(body);
  } catch {
    throw invalid('manifest is not UTF-8');
  }
  checkStructure(text);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw invalid(`manifest is not JSON: ${(e as Error).message}`);
  }
  if (!isObject(json)) throw invalid('manifest must be a JSON object');
  return json;
}

const SCHEMA1_REFUSAL =
  'Docker schema 1 manifests are not supported: push an OCI or Docker schema 2 manifest';

/**
 * The media type a manifest is stored and served as. The request's Content-Type and the body's `mediaType`
 * must agree when both are given; either alone decides; neither is refused, since it cannot be served back.
 */
function resolveMediaType(contentType: string, bodyType: string | null): string {
  if (SCHEMA1_TYPES.has(contentType) || (bodyType !== null && SCHEMA1_TYPES.has(bodyType))) {
    throw invalid(SCHEMA1_REFUSAL);
  }
  const declared = GENERIC_TYPES.has(contentType) ? null : contentType;
  if (declared !== null && bodyType !== null && declared !== bodyType) {
    throw invalid('the mediaType of the manifest does not match the Content-Type', {
      contentType: declared,
      mediaType: bodyType,
    });
  }
  const mediaType = declared ?? bodyType;
  if (mediaType === null) throw invalid('the manifest has no mediaType and the request no Content-Type');
  if (!IMAGE_MANIFEST_TYPES.has(mediaType) && !INDEX_TYPES.has(mediaType)) {
    throw invalid('unsupported manifest media type', { mediaType, supported: SUPPORTED_MANIFEST_TYPES });
  }
  return mediaType;
}

/** Parses and validates a manifest as pushed, with the request's Content-Type. */
export function parseManifest(body: Buffer, contentType: string | null | undefined): ParsedManifest {
  const json = parseJson(body);
  const requested = baseMediaType(contentType);
  if (json.schemaVersion === 1) throw invalid(SCHEMA1_REFUSAL);
  const mediaType = resolveMediaType(requested, optionalString(json.mediaType, 'mediaType'));
  if (json.schemaVersion !== 2)
    throw invalid('schemaVersion must be 2', { schemaVersion: json.schemaVersion ?? null });

  const subject = json.subject === undefined ? null : descriptor(json.subject, 'subject').digest;
  const annotations = annotationsOf(json.annotations, 'annotations');
  const artifactType = optionalString(json.artifactType, 'artifactType');

  if (INDEX_TYPES.has(mediaType)) {
    const children = descriptors(json.manifests, 'manifests');
    return {
      mediaType,
      artifactType,
      subject,
      annotations,
      references: children.map((d) => ({ digest: d.digest, kind: 'manifest', size: d.size })),
    };
  }

  if (json.config === undefined) throw invalid('an image manifest must have a config descriptor');
  const config = descriptor(json.config, 'config');
  const layers = descriptors(json.layers, 'layers');
  return {
    mediaType,
    artifactType: artifactType ?? config.mediaType,
    subject,
    annotations,
    references: [
      { digest: config.digest, kind: 'config', size: config.size },
      ...layers.map((d): ManifestReference => ({ digest: d.digest, kind: 'layer', size: d.size })),
    ],
  };
}
