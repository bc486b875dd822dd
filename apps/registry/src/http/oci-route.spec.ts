import { rewriteOciUrl } from './oci-route';

describe('rewriteOciUrl', () => {
  it.each([
    ['/v2/', '/v2/'],
    ['/v2/_catalog?n=1', '/v2/_catalog?n=1'],
    ['/v2/a/blobs/uploads/', '/v2/a/blobs/uploads/'],
    ['/v2/a/b/blobs/uploads/', '/v2/a%2Fb/blobs/uploads/'],
    ['/v2/a/b/c/blobs/uploads/123?digest=x', '/v2/a%2Fb%2Fc/blobs/uploads/123?digest=x'],
    ['/v2/a/b/blobs/sha256:00', '/v2/a%2Fb/blobs/sha256:00'],
    ['/v2/a/b/manifests/latest', '/v2/a%2Fb/manifests/latest'],
    ['/v2/a/blobs/blobs/sha256:00', '/v2/a%2Fblobs/blobs/sha256:00'],
    ['/v2/x/y/tags/list?n=2&last=a', '/v2/x%2Fy/tags/list?n=2&last=a'],
    ['/v2/x/y/referrers/sha256:00?artifactType=a', '/v2/x%2Fy/referrers/sha256:00?artifactType=a'],
    ['/v2/x/y/unknown', '/v2/x/y/unknown'],
  ])('routes %s as %s', (from, to) => expect(rewriteOciUrl(from)).toBe(to));
});
