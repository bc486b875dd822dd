import { AsyncLocalStorage } from 'node:async_hooks';
import type { FastifyRequest } from 'fastify';
import type { RequestMeta } from '@strata/events';

interface RequestStore {
  readonly requestId: string;
}

/** Carries the request id to every log line written while a request is served, wherever it is written. */
export const requestContext = new AsyncLocalStorage<RequestStore>();

export function currentRequestId(): string | undefined {
  return requestContext.getStore()?.requestId;
}

/** The request metadata every event records. Without authentication every actor is `anonymous`. */
export function requestMeta(req: FastifyRequest): RequestMeta {
  const ua = req.headers['user-agent'];
  return {
    actor: 'anonymous',
    requestId: String(req.id),
    clientAddr: req.ip ?? null,
    userAgent: typeof ua === 'string' ? ua.slice(0, 512) : null,
  };
}
