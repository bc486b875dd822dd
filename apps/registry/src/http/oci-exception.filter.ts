import { type ArgumentsHost, Catch, type ExceptionFilter, HttpException } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { databaseUnavailable } from '@strata/db';
import { type ErrorName, RegistryError } from '@strata/oci';
import { discardBody, requestBody } from './body';
import { cutForIdling } from './connection-guard';
import { errorHeaders } from './error-headers';

/** Maps what the HTTP framework throws (unknown routes, bad requests) onto the error table. */
function fromHttpStatus(status: number): ErrorName {
  switch (status) {
    case 404:
      return 'ROUTE_UNKNOWN';
    case 405:
      return 'METHOD_UNKNOWN';
    case 413:
      return 'SIZE_INVALID';
    case 415:
      return 'UNSUPPORTED';
    case 416:
      return 'RANGE_INVALID';
    case 429:
      return 'TOOMANYREQUESTS';
    case 503:
      return 'UNAVAILABLE';
    default:
      return status >= 400 && status < 500 ? 'UNSUPPORTED' : 'UNKNOWN';
  }
}

/**
 * The file system holding blob bytes is full (ENOSPC) or the quota of its user is (EDQUOT). The storage drivers
 * remove what they had written of the object, so nothing is left half-written.
 */
export function storageFull(error: unknown): boolean {
  const { code } = (error ?? {}) as { code?: unknown };
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/**
 * How long a client is asked to wait after a full disk: space comes back when an operator frees it or a job
 * expires old uploads, not within the second a database restart takes.
 */
const STORAGE_FULL_RETRY_AFTER = 30;

export function toRegistryError(error: unknown): RegistryError {
  if (error instanceof RegistryError) return error;
  if (databaseUnavailable(error)) {
    return new RegistryError('UNAVAILABLE', {
      reason: 'the database is unavailable; try again',
      retryAfter: 1,
    });
  }
  if (storageFull(error)) {
    return new RegistryError('UNAVAILABLE', {
      reason: 'the registry is out of storage space; try again later',
      retryAfter: STORAGE_FULL_RETRY_AFTER,
    });
  }
  if (error instanceof HttpException)
    return new RegistryError(fromHttpStatus(error.getStatus()), error.message);
  const status = (error as { statusCode?: unknown })?.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new RegistryError(fromHttpStatus(status), (error as Error).message);
  }
  return new RegistryError('UNKNOWN');
}

/**
 * The request's body failed because its client hung up mid-way: Node's own "aborted" (ECONNRESET), not a reset
 * of some other connection, such as the database's, while the body was being read.
 */
function clientWentAway(error: unknown, request: FastifyRequest): boolean {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  return code === 'ECONNRESET' && message === 'aborted' && request.raw.destroyed && !request.raw.complete;
}

/** Renders any failure as the OCI error envelope; HEAD responses get the status and headers only. */
let storageErrorCounter: ((code: string) => void) | null = null;

/** Where storage errors are counted (the metrics, when they are on): one call per failed storage operation. */
export function countStorageErrors(counter: ((code: string) => void) | null): void {
  storageErrorCounter = counter;
}

/** An error of the blob storage's system calls (ENOSPC, EIO, ...), as opposed to a refusal or a database error. */
function storageErrorCode(error: unknown): string | null {
  const { code, syscall } = (error ?? {}) as { code?: unknown; syscall?: unknown };
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) && typeof syscall === 'string' ? code : null;
}

export function sendError(
  error: unknown,
  request: FastifyRequest,
  reply: FastifyReply,
  logger: Logger,
): void {
  if (cutForIdling(request.raw.socket)) {
    // The connection guard answered 408 and closed the connection: the client sent none of the body it owed for
    // the idle timeout, and the handler reading it gives up now.
    logger.info(
      { method: request.method, url: request.originalUrl, reason: 'client idle timeout', status: 408 },
      'stopped reading a request body its client stopped sending',
    );
    reply.raw.destroy();
    return;
  }
  if (clientWentAway(error, request)) {
    // Nothing can be answered on a connection the client has closed, and it is not a failure of ours.
    logger.info(
      { method: request.method, url: request.originalUrl, reason: (error as Error).message },
      'client closed the connection before the request was read',
    );
    reply.raw.destroy();
    return;
  }
  const e = toRegistryError(error);
  const storageCode = storageErrorCode(error);
  if (storageCode !== null && !clientWentAway(error, request)) storageErrorCounter?.(storageCode);
  if (storageFull(error)) {
    // The operator's to fix (free space or grow the volume), not a bug: one line each, no stack.
    const { code, syscall, path } = error as { code?: unknown; syscall?: unknown; path?: unknown };
    logger.warn(
      { method: request.method, url: request.originalUrl, code, syscall, path },
      'failed to store blob bytes: no space left on the storage, answered 503',
    );
  } else if (e.code === 'UNAVAILABLE') {
    // Expected while the database restarts or fails over, and possibly for every request then: one line each, no
    // stack.
    const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
    logger.warn(
      { method: request.method, url: request.originalUrl, code, reason: message },
      'failed to reach the database, answered 503',
    );
  } else if (e.status >= 500) {
    logger.error({ err: error, method: request.method, url: request.originalUrl }, 'failed to serve request');
  }
  if (reply.sent || reply.raw.headersSent) {
    reply.raw.destroy();
    return;
  }
  reply.code(e.status);
  for (const [k, v] of Object.entries(errorHeaders(e))) reply.header(k, v);
  // A body still arriving when the answer is an error is read to a bound and thrown away (discardBody), so its
  // client sees the answer rather than a reset, and the connection serves the next request.
  if (requestBody(request) !== null && !request.raw.complete) discardBody(request);
  if (request.method === 'HEAD') {
    reply.header('content-length', '0');
    reply.send();
    return;
  }
  reply.header('content-type', 'application/json; charset=utf-8');
  reply.send(JSON.stringify(e.toEnvelope()));
}

@Catch()
export class OciExceptionFilter implements ExceptionFilter {
  constructor(private readonly logger: Logger) {}

  catch(error: unknown, host: ArgumentsHost): void {
    const http = host.switchToHttp();
    sendError(error, http.getRequest<FastifyRequest>(), http.getResponse<FastifyReply>(), this.logger);
  }
}
