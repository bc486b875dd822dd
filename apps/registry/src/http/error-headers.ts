import { RegistryError } from '@strata/oci';
import { uploadRange } from '@strata/registry';

/** Seconds a client is told to wait before trying a 503 again, unless the error says otherwise. */
const DEFAULT_RETRY_AFTER = 1;

function field<T>(detail: unknown, name: string, type: 'string' | 'number'): T | undefined {
  if (typeof detail !== 'object' || detail === null) return undefined;
  const value = (detail as Record<string, unknown>)[name];
  return typeof value === type ? (value as T) : undefined;
}

/**
 * The headers an error's response carries, derived from its code and detail: the one place where the domain's
 * errors become HTTP.
 * - 503 UNAVAILABLE and 429 TOOMANYREQUESTS: `Retry-After` (the detail's `retryAfter` seconds, else one second).
 * - 416 on an upload (detail `repository`, `upload`, `size`): where the upload is and what it holds
 *   (`Location`, `Range`, `Docker-Upload-UUID`), so the client can resume from there, as the spec says.
 * - 416 on a blob read (detail `size` alone): `Content-Range: bytes *\/<size>`, as RFC 9110 says.
 */
export function errorHeaders(e: RegistryError): Record<string, string> {
  if (e.status === 503 || e.status === 429) {
    return { 'Retry-After': String(field<number>(e.detail, 'retryAfter', 'number') ?? DEFAULT_RETRY_AFTER) };
  }
  if (e.name_ === 'RANGE_INVALID') {
    const size = field<number>(e.detail, 'size', 'number');
    if (size === undefined) return {};
    const upload = field<string>(e.detail, 'upload', 'string');
    const repository = field<string>(e.detail, 'repository', 'string');
    if (upload === undefined || repository === undefined) return { 'Content-Range': `bytes */${size}` };
    return {
      Location: `/v2/${repository}/blobs/uploads/${upload}`,
      Range: uploadRange(size),
      'Docker-Upload-UUID': upload,
    };
  }
  return {};
}
