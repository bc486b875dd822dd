import { type ArgumentsHost, Catch, type ExceptionFilter, HttpException } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { type ErrorName, RegistryError } from '@strata/oci';

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

export function toRegistryError(error: unknown): RegistryError {
  if (error instanceof RegistryError) return error;
  if (error instanceof HttpException)
    return new RegistryError(fromHttpStatus(error.getStatus()), error.message);
  const status = (error as { statusCode?: unknown })?.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new RegistryError(fromHttpStatus(status), (error as Error).message);
  }
  return new RegistryError('UNKNOWN');
}

/** Renders any failure as the OCI error envelope; HEAD responses get the status and headers only. */
export function sendError(
  error: unknown,
  request: FastifyRequest,
  reply: FastifyReply,
  logger: Logger,
): void {
  const e = toRegistryError(error);
  if (e.status >= 500) {
    logger.error({ err: error, method: request.method, url: request.url }, 'failed to serve request');
  }
  if (reply.sent || reply.raw.headersSent) {
    reply.raw.destroy();
    return;
  }
  reply.code(e.status);
  for (const [k, v] of Object.entries(e.headers ?? {})) reply.header(k, v);
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
