/**
 * Repository names contain slashes, which a router cannot tell from path separators. Before routing, the
 * name part of an OCI path is percent-encoded into one segment, so `/v2/a/b/manifests/x` routes as
 * `/v2/a%2Fb/manifests/x`. The name is the longest prefix that leaves a known resource suffix.
 */
const RESOURCE_PATTERNS: readonly RegExp[] = [
  /^\/v2\/(.+)(\/blobs\/uploads\/?)$/,
  /^\/v2\/(.+)(\/blobs\/uploads\/[^/]+)$/,
  /^\/v2\/(.+)(\/blobs\/[^/]+)$/,
  /^\/v2\/(.+)(\/manifests\/[^/]+)$/,
  /^\/v2\/(.+)(\/tags\/list\/?)$/,
  /^\/v2\/(.+)(\/referrers\/[^/]+)$/,
];

export function rewriteOciUrl(url: string): string {
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  if (!path.startsWith('/v2/') || path === '/v2/_catalog') return url;
  for (const re of RESOURCE_PATTERNS) {
    const m = re.exec(path);
    if (m?.[1] && m[2]) {
      if (!m[1].includes('/')) return url;
      const rest = q === -1 ? '' : url.slice(q);
      return `/v2/${m[1].split('/').map(encodeURIComponent).join('%2F')}${m[2]}${rest}`;
    }
  }
  return url;
}
