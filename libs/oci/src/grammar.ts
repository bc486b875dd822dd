import { RegistryError } from './errors';

/** Repository name grammar of the OCI distribution spec: path components separated by `/`. */
const NAME_COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME_RE = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`);
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
/** `algorithm:encoded` per the OCI image spec's digest grammar. */
const DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export const MAX_NAME_LENGTH = 255;

export type DigestAlgorithm = 'sha256' | 'sha512';

export const DIGEST_HEX_LENGTH: Readonly<Record<DigestAlgorithm, number>> = { sha256: 64, sha512: 128 };

export interface ParsedDigest {
  readonly algorithm: DigestAlgorithm;
  readonly hex: string;
  readonly digest: string;
}

export function isValidName(name: string): boolean {
  return name.length <= MAX_NAME_LENGTH && NAME_RE.test(name);
}

export function assertName(name: string): string {
  if (!isValidName(name)) throw new RegistryError('NAME_INVALID', { name });
  return name;
}

export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

export function looksLikeDigest(reference: string): boolean {
  return reference.includes(':');
}

/**
 * Parses a digest, refusing malformed ones with DIGEST_INVALID and well-formed ones of an algorithm Strata
 * does not compute with UNSUPPORTED.
 */
export function parseDigest(value: string): ParsedDigest {
  if (!DIGEST_RE.test(value))
    throw new RegistryError('DIGEST_INVALID', { digest: value, reason: 'malformed' });
  const colon = value.indexOf(':');
  const algorithm = value.slice(0, colon);
  const hex = value.slice(colon + 1);
  if (algorithm !== 'sha256' && algorithm !== 'sha512') {
    throw new RegistryError('UNSUPPORTED', {
      digest: value,
      reason: `digest algorithm ${algorithm} is not supported`,
    });
  }
  if (hex.length !== DIGEST_HEX_LENGTH[algorithm] || !/^[a-f0-9]+$/.test(hex)) {
    throw new RegistryError('DIGEST_INVALID', { digest: value, reason: `malformed ${algorithm} digest` });
  }
  return { algorithm, hex, digest: value };
}
