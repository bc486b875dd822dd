// Hash routes, so the server serves only static files and every view has an address to share:
//
//   #/                              repositories
//   #/r/<repository>                its tags
//   #/r/<repository>/i/<reference>  an image, by tag or digest
//   #/r/<repository>/t/<tag>        a tag's timeline
//   #/audit?actor=&repository=&action=&since=&until=&before=
//
// A repository name keeps its slashes (`#/r/team/app`), read up to the last `/i/` or `/t/` (a tag or digest has
// no slash). A name that has `i` or `t` as a component of its own is written with its slashes encoded instead,
// so that `#/r/a/t/b` can only mean the timeline of tag b in a.
import { useEffect, useState } from 'preact/hooks';

export const AUDIT_FILTERS = ['actor', 'repository', 'action', 'since', 'until', 'before'] as const;
/** Each filter of the audit log; '' when not set. `since`, `until` are ISO times, `before` a seq. */
export type AuditFilters = Record<(typeof AUDIT_FILTERS)[number], string>;

export type Route =
  | { readonly view: 'repositories' }
  | { readonly view: 'tags'; readonly repository: string }
  | { readonly view: 'image'; readonly repository: string; readonly reference: string }
  | { readonly view: 'timeline'; readonly repository: string; readonly tag: string }
  | { readonly view: 'audit'; readonly filters: AuditFilters }
  | { readonly view: 'not-found' };

function auditFilters(search: string): AuditFilters {
  const params = new URLSearchParams(search);
  return Object.fromEntries(AUDIT_FILTERS.map((name) => [name, params.get(name) ?? ''])) as AuditFilters;
}

function repositoryRoute(segments: string[]): Route {
  const kind = segments[segments.length - 2];
  const last = segments[segments.length - 1];
  if (segments.length >= 3 && last !== undefined && (kind === 'i' || kind === 't')) {
    const repository = segments.slice(0, -2).map(decodeURIComponent).join('/');
    const reference = decodeURIComponent(last);
    return kind === 'i'
      ? { view: 'image', repository, reference }
      : { view: 'timeline', repository, tag: reference };
  }
  if (segments.length === 0) return { view: 'not-found' };
  return { view: 'tags', repository: segments.map(decodeURIComponent).join('/') };
}

export function parseRoute(hash: string): Route {
  const raw = hash.replace(/^#/, '');
  const mark = raw.indexOf('?');
  const path = mark < 0 ? raw : raw.slice(0, mark);
  const segments = path.split('/').filter((s) => s !== '');
  try {
    if (segments.length === 0) return { view: 'repositories' };
    if (segments[0] === 'audit' && segments.length === 1)
      return { view: 'audit', filters: auditFilters(mark < 0 ? '' : raw.slice(mark + 1)) };
    if (segments[0] === 'r') return repositoryRoute(segments.slice(1));
  } catch {
    // A malformed escape (a hand-typed `%`): no such page.
  }
  return { view: 'not-found' };
}

/** The part of the hash that names the view, without its query. */
export function routePath(hash: string): string {
  return hash.split('?', 1)[0] ?? '';
}

/** Encoded as a path segment, leaving a digest's `:` readable. */
function segment(value: string): string {
  return encodeURIComponent(value).replace(/%3A/gi, ':');
}

function repositoryPath(repository: string): string {
  const components = repository.split('/');
  if (components.some((c) => c === 'i' || c === 't')) return encodeURIComponent(repository);
  return components.map(segment).join('/');
}

export const href = {
  repositories: (): string => '#/',
  tags: (repository: string): string => `#/r/${repositoryPath(repository)}`,
  image: (repository: string, reference: string): string =>
    `#/r/${repositoryPath(repository)}/i/${segment(reference)}`,
  timeline: (repository: string, tag: string): string =>
    `#/r/${repositoryPath(repository)}/t/${segment(tag)}`,
  audit: (filters: Partial<AuditFilters>): string => {
    const params = new URLSearchParams();
    for (const name of AUDIT_FILTERS) if (filters[name]) params.set(name, filters[name]);
    const query = params.toString();
    return query ? `#/audit?${query}` : '#/audit';
  },
};

/** location.hash, kept current. */
export function useHash(): string {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const update = (): void => setHash(location.hash);
    window.addEventListener('hashchange', update);
    return () => window.removeEventListener('hashchange', update);
  }, []);
  return hash;
}
