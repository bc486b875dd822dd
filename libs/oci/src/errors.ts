/**
 * The one table of every error Strata answers with. Domain code throws RegistryError with a name from this
 * table; the HTTP layer renders `{"errors":[{"code","message","detail"}]}` with the table's status. No call
 * site chooses a status.
 */
export const OCI_SPEC_ERROR_CODES = [
  'BLOB_UNKNOWN',
  'BLOB_UPLOAD_INVALID',
  'BLOB_UPLOAD_UNKNOWN',
  'DIGEST_INVALID',
  'MANIFEST_BLOB_UNKNOWN',
  'MANIFEST_INVALID',
  'MANIFEST_UNKNOWN',
  'NAME_INVALID',
  'NAME_UNKNOWN',
  'SIZE_INVALID',
  'UNAUTHORIZED',
  'DENIED',
  'UNSUPPORTED',
  'TOOMANYREQUESTS',
] as const;

export type OciSpecErrorCode = (typeof OCI_SPEC_ERROR_CODES)[number];

interface ErrorEntry {
  /** The code clients see in the envelope. */
  readonly code: string;
  readonly status: number;
  readonly message: string;
}

export const ERROR_TABLE = {
  BLOB_UNKNOWN: { code: 'BLOB_UNKNOWN', status: 404, message: 'blob unknown to registry' },
  BLOB_UPLOAD_INVALID: { code: 'BLOB_UPLOAD_INVALID', status: 400, message: 'blob upload invalid' },
  BLOB_UPLOAD_UNKNOWN: {
    code: 'BLOB_UPLOAD_UNKNOWN',
    status: 404,
    message: 'blob upload unknown to registry',
  },
  DIGEST_INVALID: {
    code: 'DIGEST_INVALID',
    status: 400,
    message: 'provided digest did not match uploaded content',
  },
  MANIFEST_BLOB_UNKNOWN: {
    code: 'MANIFEST_BLOB_UNKNOWN',
    status: 400,
    message: 'manifest references a manifest or blob unknown to registry',
  },
  MANIFEST_INVALID: { code: 'MANIFEST_INVALID', status: 400, message: 'manifest invalid' },
  MANIFEST_UNKNOWN: { code: 'MANIFEST_UNKNOWN', status: 404, message: 'manifest unknown to registry' },
  NAME_INVALID: { code: 'NAME_INVALID', status: 400, message: 'invalid repository name' },
  NAME_UNKNOWN: { code: 'NAME_UNKNOWN', status: 404, message: 'repository name not known to registry' },
  SIZE_INVALID: {
    code: 'SIZE_INVALID',
    status: 400,
    message: 'provided length did not match content length',
  },
  UNAUTHORIZED: { code: 'UNAUTHORIZED', status: 401, message: 'authentication required' },
  DENIED: { code: 'DENIED', status: 403, message: 'requested access to the resource is denied' },
  UNSUPPORTED: { code: 'UNSUPPORTED', status: 400, message: 'the operation is unsupported' },
  TOOMANYREQUESTS: { code: 'TOOMANYREQUESTS', status: 429, message: 'too many requests' },
  // Beyond the spec's list, as the reference registry has them.
  TAG_INVALID: { code: 'TAG_INVALID', status: 400, message: 'manifest tag did not match URI' },
  PAGINATION_NUMBER_INVALID: {
    code: 'PAGINATION_NUMBER_INVALID',
    status: 400,
    message: 'invalid number of results requested',
  },
  // DENIED, but 409 rather than the spec's 403: the request is refused because of the blob's present state (a
  // manifest of the repository uses it), and succeeds once that manifest is deleted. 405 would say that
  // deletes are off altogether, as the reference registry answers when they are disabled.
  BLOB_REFERENCED: {
    code: 'DENIED',
    status: 409,
    message: 'blob is referenced by a manifest of this repository; delete the manifest first',
  },
  RANGE_INVALID: { code: 'RANGE_INVALID', status: 416, message: 'invalid content range' },
  // The token endpoint's (/auth/token): a request the Docker token specification does not allow.
  SCOPE_INVALID: { code: 'SCOPE_INVALID', status: 400, message: 'invalid scope' },
  TOKEN_REQUEST_INVALID: { code: 'UNSUPPORTED', status: 400, message: 'invalid token request' },
  MANIFEST_TOO_LARGE: { code: 'SIZE_INVALID', status: 413, message: 'manifest exceeds the size limit' },
  METHOD_UNKNOWN: { code: 'UNSUPPORTED', status: 405, message: 'method not allowed for this resource' },
  // The spec's code for an operation the registry does not implement, with the status of a path it does not know.
  ROUTE_UNKNOWN: { code: 'UNSUPPORTED', status: 404, message: 'no such route' },
  TAG_IMMUTABLE: { code: 'DENIED', status: 403, message: 'the tag is immutable' },
  QUERY_INVALID: { code: 'BAD_REQUEST', status: 400, message: 'invalid query parameter' },
  URL_INVALID: { code: 'BAD_REQUEST', status: 400, message: 'malformed request URL' },
  // HTTP framing refused before a request reaches a route: no OCI code fits, so these are extensions.
  REQUEST_INVALID: { code: 'BAD_REQUEST', status: 400, message: 'malformed HTTP request' },
  REQUEST_TIMEOUT: { code: 'REQUEST_TIMEOUT', status: 408, message: 'the request was not received in time' },
  HEADERS_TOO_LARGE: { code: 'HEADERS_TOO_LARGE', status: 431, message: 'request headers too large' },
  UNAVAILABLE: { code: 'UNAVAILABLE', status: 503, message: 'service unavailable' },
  UNKNOWN: { code: 'UNKNOWN', status: 500, message: 'unknown error' },
} as const satisfies Record<string, ErrorEntry>;

export type ErrorName = keyof typeof ERROR_TABLE;

export class RegistryError extends Error {
  readonly code: string;
  readonly status: number;

  /**
   * `detail` is what clients are told beside the code. What a response must also carry in headers (`Range` and
   * `Location` on an upload's 416, `Retry-After` on a 503) is derived from it by the HTTP layer
   * (apps/registry/src/http/error-headers.ts), so the domain knows nothing of HTTP.
   */
  constructor(
    readonly name_: ErrorName,
    readonly detail?: unknown,
  ) {
    const entry = ERROR_TABLE[name_];
    super(typeof detail === 'string' ? `${entry.message}: ${detail}` : entry.message);
    this.code = entry.code;
    this.status = entry.status;
  }

  get entry(): ErrorEntry {
    return ERROR_TABLE[this.name_];
  }

  toEnvelope(): { errors: { code: string; message: string; detail: unknown }[] } {
    return { errors: [{ code: this.code, message: this.entry.message, detail: this.detail ?? null }] };
  }
}

export function isRegistryError(e: unknown): e is RegistryError {
  return e instanceof RegistryError;
}
