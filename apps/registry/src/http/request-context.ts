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

const actors = new WeakMap<FastifyRequest, string>();

/** Who the request acts as, once access control has authenticated it. */
export function setPrincipal(req: FastifyRequest, principal: { readonly name: string }): void {
  actors.set(req, principal.name);
}

/** The request metadata every event records: the authenticated account, else (and with auth off) `anonymous`. */
export function requestMeta(req: FastifyRequest): RequestMeta {
  const ua = req.headers['user-agent'];
  return {
    actor: actors.get(req) ?? 'anonymous',
    requestId: String(req.id),
    clientAddr: req.ip ?? null,
    userAgent: typeof ua === 'string' ? ua.slice(0, 512) : null,
  };
}
