import { RegistryError } from '@strata/oci';
import { rangeError } from '@strata/registry';
import { errorHeaders } from './error-headers';

describe('errorHeaders', () => {
  it('tells where an upload is and what it holds on its 416', () => {
    expect(errorHeaders(rangeError('a/b', 'u-1', 10))).toEqual({
      Location: '/v2/a/b/blobs/uploads/u-1',
      Range: '0-9',
      'Docker-Upload-UUID': 'u-1',
    });
    expect(errorHeaders(rangeError('a/b', 'u-1', 0)).Range).toBe('0-0');
  });

  it("gives a blob read's 416 the object's size, and other 416s nothing", () => {
    expect(errorHeaders(new RegistryError('RANGE_INVALID', { size: 42 }))).toEqual({
      'Content-Range': 'bytes */42',
    });
    expect(errorHeaders(new RegistryError('RANGE_INVALID', { expected: 3, received: 2 }))).toEqual({});
  });

  it('gives every 503 a Retry-After, one second unless the error says', () => {
    expect(errorHeaders(new RegistryError('UNAVAILABLE'))).toEqual({ 'Retry-After': '1' });
    expect(errorHeaders(new RegistryError('UNAVAILABLE', { reason: 'full', retryAfter: 30 }))).toEqual({
      'Retry-After': '30',
    });
    expect(errorHeaders(new RegistryError('BLOB_UNKNOWN', { size: 1 }))).toEqual({});
  });
});
