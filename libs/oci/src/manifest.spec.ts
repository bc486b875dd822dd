import { RegistryError } from './errors';
import { baseMediaType, MEDIA_TYPE, parseManifest } from './manifest';

const d = (c: string): string => `sha256:${c.repeat(64)}`;
const CONFIG = { mediaType: MEDIA_TYPE.OCI_CONFIG, digest: d('c'), size: 10 };
const LAYER = { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: d('1'), size: 20 };

const body = (json: unknown): Buffer => Buffer.from(JSON.stringify(json));
const image = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  schemaVersion: 2,
  mediaType: MEDIA_TYPE.OCI_MANIFEST,
  config: CONFIG,
  layers: [LAYER],
  ...extra,
});

function refusal(fn: () => unknown): { code: string; detail: unknown } {
  try {
    fn();
  } catch (e) {
    if (e instanceof RegistryError) return { code: e.code, detail: e.detail };
    throw e;
  }
  throw new Error('not refused');
}

describe('parseManifest', () => {
  it('reads an OCI image manifest: config then layers, artifactType from the config', () => {
    const m = parseManifest(body(image({ annotations: { a: 'b' } })), MEDIA_TYPE.OCI_MANIFEST);
    expect(m).toEqual({
      mediaType: MEDIA_TYPE.OCI_MANIFEST,
      artifactType: MEDIA_TYPE.OCI_CONFIG,
      subject: null,
      annotations: { a: 'b' },
      references: [
        { digest: d('c'), kind: 'config', size: 10 },
        { digest: d('1'), kind: 'layer', size: 20 },
      ],
    });
  });

  it('prefers the manifest artifactType and reads the subject', () => {
    const m = parseManifest(
      body(
        image({
          artifactType: 'application/x-sbom',
          subject: { ...CONFIG, mediaType: MEDIA_TYPE.OCI_MANIFEST },
        }),
      ),
      MEDIA_TYPE.OCI_MANIFEST,
    );
    expect(m.artifactType).toBe('application/x-sbom');
    expect(m.subject).toBe(d('c'));
  });

  it('reads an OCI index and a Docker manifest list as manifest references', () => {
    for (const mediaType of [MEDIA_TYPE.OCI_INDEX, MEDIA_TYPE.DOCKER_MANIFEST_LIST]) {
      const child = {
        mediaType: MEDIA_TYPE.OCI_MANIFEST,
        digest: d('e'),
        size: 300,
        platform: { os: 'linux' },
      };
      const m = parseManifest(body({ schemaVersion: 2, mediaType, manifests: [child] }), mediaType);
      expect(m.mediaType).toBe(mediaType);
      expect(m.artifactType).toBeNull();
      expect(m.references).toEqual([{ digest: d('e'), kind: 'manifest', size: 300 }]);
    }
  });

  it('reads a Docker schema 2 manifest', () => {
    const m = parseManifest(
      body(image({ mediaType: MEDIA_TYPE.DOCKER_MANIFEST })),
      'application/vnd.docker.distribution.manifest.v2+json; charset=utf-8',
    );
    expect(m.mediaType).toBe(MEDIA_TYPE.DOCKER_MANIFEST);
  });

  it('takes the media type from the body when the Content-Type is missing or generic', () => {
    expect(parseManifest(body(image()), undefined).mediaType).toBe(MEDIA_TYPE.OCI_MANIFEST);
    expect(parseManifest(body(image()), 'application/json').mediaType).toBe(MEDIA_TYPE.OCI_MANIFEST);
  });

  it('takes the media type from the Content-Type when the body has none', () => {
    const { mediaType: _omitted, ...bare } = image();
    expect(parseManifest(body(bare), MEDIA_TYPE.OCI_MANIFEST).mediaType).toBe(MEDIA_TYPE.OCI_MANIFEST);
    const none = refusal(() => parseManifest(body(bare), null));
    expect(none.code).toBe('MANIFEST_INVALID');
  });

  it('refuses a body mediaType that contradicts the Content-Type', () => {
    const r = refusal(() => parseManifest(body(image()), MEDIA_TYPE.OCI_INDEX));
    expect(r.code).toBe('MANIFEST_INVALID');
    expect(r.detail).toMatchObject({ contentType: MEDIA_TYPE.OCI_INDEX, mediaType: MEDIA_TYPE.OCI_MANIFEST });
  });

  it.each([
    ['schema 1 content type', image(), MEDIA_TYPE.DOCKER_SCHEMA1],
    ['signed schema 1 content type', image(), MEDIA_TYPE.DOCKER_SCHEMA1_SIGNED],
    ['schemaVersion 1', { schemaVersion: 1, name: 'x', tag: 'y', fsLayers: [] }, 'application/json'],
  ])('refuses Docker schema 1 (%s) with a clear message', (_case, json, contentType) => {
    const r = refusal(() => parseManifest(body(json), contentType));
    expect(r.code).toBe('MANIFEST_INVALID');
    expect(JSON.stringify(r.detail)).toMatch(/schema 1/);
  });

  it.each<[string, Buffer, string]>([
    ['not JSON', Buffer.from('{nope'), MEDIA_TYPE.OCI_MANIFEST],
    ['not UTF-8', Buffer.from([0x7b, 0xff, 0x7d]), MEDIA_TYPE.OCI_MANIFEST],
    ['a JSON array', body([image()]), MEDIA_TYPE.OCI_MANIFEST],
    ['empty', Buffer.alloc(0), MEDIA_TYPE.OCI_MANIFEST],
    ['schemaVersion 3', body(image({ schemaVersion: 3 })), MEDIA_TYPE.OCI_MANIFEST],
    ['no schemaVersion', body(image({ schemaVersion: undefined })), MEDIA_TYPE.OCI_MANIFEST],
    ['no config', body(image({ config: undefined })), MEDIA_TYPE.OCI_MANIFEST],
    ['no layers', body(image({ layers: undefined })), MEDIA_TYPE.OCI_MANIFEST],
    [
      'a malformed layer digest',
      body(image({ layers: [{ ...LAYER, digest: 'sha256:xyz' }] })),
      MEDIA_TYPE.OCI_MANIFEST,
    ],
    [
      'an unsupported layer digest',
      body(image({ layers: [{ ...LAYER, digest: 'md5:00' }] })),
      MEDIA_TYPE.OCI_MANIFEST,
    ],
    ['a negative size', body(image({ config: { ...CONFIG, size: -1 } })), MEDIA_TYPE.OCI_MANIFEST],
    ['a fractional size', body(image({ config: { ...CONFIG, size: 1.5 } })), MEDIA_TYPE.OCI_MANIFEST],
    ['a string size', body(image({ config: { ...CONFIG, size: '10' } })), MEDIA_TYPE.OCI_MANIFEST],
    [
      'a descriptor without mediaType',
      body(image({ layers: [{ digest: d('1'), size: 1 }] })),
      MEDIA_TYPE.OCI_MANIFEST,
    ],
    ['non-string annotations', body(image({ annotations: { a: 1 } })), MEDIA_TYPE.OCI_MANIFEST],
    ['array annotations', body(image({ annotations: ['a'] })), MEDIA_TYPE.OCI_MANIFEST],
    ['a non-string artifactType', body(image({ artifactType: 7 })), MEDIA_TYPE.OCI_MANIFEST],
    ['a malformed subject', body(image({ subject: { digest: d('1') } })), MEDIA_TYPE.OCI_MANIFEST],
    [
      'an index without manifests',
      body({ schemaVersion: 2, mediaType: MEDIA_TYPE.OCI_INDEX }),
      MEDIA_TYPE.OCI_INDEX,
    ],
    ['a NUL in an annotation', body(image({ annotations: { a: 'x\u0000y' } })), MEDIA_TYPE.OCI_MANIFEST],
    ['a NUL in an annotation key', body(image({ annotations: { 'a\u0000': 'x' } })), MEDIA_TYPE.OCI_MANIFEST],
    [
      'a lone high surrogate in an annotation',
      body(image({ annotations: { a: '\ud800' } })),
      MEDIA_TYPE.OCI_MANIFEST,
    ],
    [
      'a lone low surrogate in a key',
      body(image({ annotations: { '\udfffx': 'y' } })),
      MEDIA_TYPE.OCI_MANIFEST,
    ],
    ['a reversed surrogate pair', body(image({ artifactType: 'a\udc00\ud800' })), MEDIA_TYPE.OCI_MANIFEST],
    ['an unknown media type', body(image({ mediaType: 'application/x-other' })), 'application/x-other'],
  ])('refuses %s as MANIFEST_INVALID', (_case, buf, contentType) => {
    expect(refusal(() => parseManifest(buf, contentType)).code).toBe('MANIFEST_INVALID');
  });

  it('accepts characters outside the BMP, which JSON may escape as a surrogate pair', () => {
    const escaped = Buffer.from(
      JSON.stringify(image({ annotations: { a: 'x' } })).replace('"x"', '"\\ud83d\\ude00"'),
    );
    expect(parseManifest(escaped, null).annotations).toEqual({ a: '\u{1F600}' });
    expect(
      parseManifest(body(image({ annotations: { '\u{1F600}': '\u{1F600}' } })), null).annotations,
    ).toEqual({
      '\u{1F600}': '\u{1F600}',
    });
  });

  it('refuses nesting deeper than Go clients read, and a key written twice in one object', () => {
    const deep = (n: number): string => '['.repeat(n) + ']'.repeat(n);
    const text = (annotationsValue: string): Buffer =>
      Buffer.from(JSON.stringify(image()).replace(/}$/, `,"x-deep":${annotationsValue}}`));
    // As found by a hostile client: a 100,000-deep value, then the annotations key again.
    const hostile = Buffer.from(
      JSON.stringify(image({ annotations: { a: 'b' } })).replace(
        /}$/,
        `,"x":${deep(100_000)},"annotations":{"a":"c"}}`,
      ),
    );
    expect(refusal(() => parseManifest(hostile, null))).toMatchObject({
      code: 'MANIFEST_INVALID',
      detail: { reason: 'the manifest is nested too deeply' },
    });
    // The whole document counts: 10,000 levels including the manifest object itself are read, one more is not.
    expect(parseManifest(text(deep(9_999)), null).mediaType).toBe(MEDIA_TYPE.OCI_MANIFEST);
    expect(refusal(() => parseManifest(text(deep(10_000)), null)).code).toBe('MANIFEST_INVALID');

    const twice = Buffer.from(JSON.stringify(image()).replace(/}$/, ',"mediaType":"application/x-other"}'));
    expect(refusal(() => parseManifest(twice, null))).toMatchObject({
      code: 'MANIFEST_INVALID',
      detail: { reason: 'a key appears twice in one object', key: 'mediaType' },
    });
    // Also when one of them is escaped, and inside nested objects; the same key in sibling objects is fine.
    const escaped = Buffer.from(
      JSON.stringify(image({ annotations: { a: '1' } })).replace('{"a":"1"}', '{"a":"1","\\u0061":"2"}'),
    );
    expect(refusal(() => parseManifest(escaped, null)).detail).toMatchObject({ key: 'a' });
    const siblings = image({ layers: [LAYER, { ...LAYER, digest: d('2') }], annotations: { digest: 'x' } });
    expect(parseManifest(body(siblings), null).references).toHaveLength(3);
    // Keys inside string values are not keys.
    expect(
      parseManifest(body(image({ annotations: { a: '{"a":1,"a":2}', b: '\\",\\"a' } })), null).annotations,
    ).toEqual({
      a: '{"a":1,"a":2}',
      b: '\\",\\"a',
    });
  });

  it('refuses a case variant of a field name where Go decodes a struct, as Go would read it as that field', () => {
    const reason = 'a key differs from a field name only in case';
    // As found by a hostile client: Go clients read the last of `layers` / `Layers`, JSON.parse the first.
    const shadowed = Buffer.from(
      JSON.stringify(image()).replace(/}$/, `,"Layers":[${JSON.stringify({ ...LAYER, digest: d('9') })}]}`),
    );
    expect(refusal(() => parseManifest(shadowed, null))).toMatchObject({
      code: 'MANIFEST_INVALID',
      detail: { reason, key: 'Layers', field: 'layers' },
    });
    // Alone too, inside descriptors and platforms, and with the runes Go folds into ASCII (ſ is S).
    const variants: Record<string, unknown>[] = [
      { ...image(), LAYERS: [] },
      image({ layers: [{ ...LAYER, Digest: LAYER.digest }] }),
      image({ config: { ...CONFIG, ['\u017fize']: 1 } }),
      {
        schemaVersion: 2,
        manifests: [
          { ...LAYER, mediaType: MEDIA_TYPE.OCI_MANIFEST, platform: { os: 'linux', Architecture: 'x' } },
        ],
      },
      { ...image(), ['layer\u017f']: [] },
    ];
    for (const v of variants)
      expect(refusal(() => parseManifest(body(v), null)).detail).toMatchObject({ reason });
    // Annotations are maps, matched exactly by every decoder; unknown extension values are not decoded at all.
    const maps = image({ annotations: { Digest: 'a', digest: 'b', SIZE: 'c' } });
    expect(parseManifest(body(maps), null).annotations).toEqual({ Digest: 'a', digest: 'b', SIZE: 'c' });
    expect(
      parseManifest(body({ ...image(), 'x-ext': { Layers: 1, Size: 2 } }), null).references,
    ).toHaveLength(2);
  });

  it('refuses a leading byte-order mark, which Go clients cannot parse', () => {
    const bom = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), body(image())]);
    expect(refusal(() => parseManifest(bom, null)).code).toBe('MANIFEST_INVALID');
  });

  it('accepts an image manifest with no layers and an index with no children', () => {
    expect(parseManifest(body(image({ layers: [] })), null).references).toHaveLength(1);
    expect(parseManifest(body({ schemaVersion: 2, manifests: [] }), MEDIA_TYPE.OCI_INDEX).references).toEqual(
      [],
    );
  });
});

describe('baseMediaType', () => {
  it('drops parameters and case', () => {
    expect(baseMediaType('Application/JSON; charset=utf-8')).toBe('application/json');
    expect(baseMediaType(undefined)).toBe('');
  });
});
