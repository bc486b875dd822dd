import type { Page } from '@strata/registry';

/** A query parameter given once; the first value when repeated. */
export function queryParam(v: unknown): string | undefined {
  if (Array.isArray(v)) return queryParam(v[0]);
  return typeof v === 'string' ? v : undefined;
}

/** Every value of a query parameter, repeated or not. */
export function queryParams(v: unknown): string[] {
  if (Array.isArray(v)) return v.filter((x): x is string => typeof x === 'string');
  return typeof v === 'string' ? [v] : [];
}

/** The spec's `Link: <path?n=N&last=X>; rel="next"`, or null on the last page. */
export function nextLink(path: string, page: Page): string | null {
  if (page.next === null) return null;
  return `<${path}?n=${page.limit}&last=${encodeURIComponent(page.next)}>; rel="next"`;
}
