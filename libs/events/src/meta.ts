import type { RequestMeta } from './event-types';

/**
 * Who did it and over which request, as the write functions of migration 0009 take it: one jsonb object, so every
 * write carries the same four fields whatever it records.
 */
export function metaJson(meta: RequestMeta): string {
  return JSON.stringify({
    actor: meta.actor,
    request_id: meta.requestId,
    client_addr: meta.clientAddr,
    user_agent: meta.userAgent,
  });
}
