import { RegistryError } from '@strata/oci';
import { parseByteRange, parseContentRange } from './body';

describe('parseContentRange', () => {
  it('reads the spec form and the bytes form', () => {
    expect(parseContentRange('0-99')).toEqual({ start: 0, end: 99 });
    expect(parseContentRange('bytes 100-199/1000')).toEqual({ start: 100, end: 199 });
    expect(parseContentRange(undefined)).toBeNull();
  });
  it.each(['', 'abc', '5-1', '-1', '1-'])('refuses %j with RANGE_INVALID', (v) => {
    expect(() => parseContentRange(v)).toThrow(RegistryError);
  });
});

describe('parseByteRange', () => {
  it('reads closed, open and suffix ranges', () => {
    expect(parseByteRange('bytes=0-9', 100)).toEqual({ start: 0, end: 9 });
    expect(parseByteRange('bytes=90-', 100)).toEqual({ start: 90, end: 99 });
    expect(parseByteRange('bytes=90-200', 100)).toEqual({ start: 90, end: 99 });
    expect(parseByteRange('bytes=-10', 100)).toEqual({ start: 90, end: 99 });
  });
  it('says when a range cannot be satisfied', () => {
    expect(parseByteRange('bytes=100-', 100)).toBe('unsatisfiable');
    expect(parseByteRange('bytes=5-4', 100)).toBe('unsatisfiable');
  });
  it('serves the whole object for forms it does not support', () => {
    expect(parseByteRange('bytes=0-1,5-6', 100)).toBeNull();
    expect(parseByteRange(undefined, 100)).toBeNull();
  });
});
