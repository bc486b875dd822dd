/**
 * The OCI distribution-spec conformance suite, ported spec for spec to TypeScript and run against the in-process
 * registry. Same requests, same assertions, same order, same names (describe/it mirror the ginkgo Context/Specify
 * tree, so "Pull > Setup > Populate registry with test blob" here is the Go spec of that name).
 *
 * Read from github.com/opencontainers/distribution-spec, folder conformance/ (the ginkgo v2 suite of the v1.1 line,
 * newest stored version of each file):
 *   setup.go                     b5f09ebe541c65857e8721d51a7a3d0e2f1d8749
 *   01_pull_test.go              47008ca930b575b3f1cd422414c00d3b0752a7cb
 *   02_push_test.go              11b8e3fba7d2d7329513d0cff53058243c334858
 *   03_discovery_test.go         b5f09ebe541c65857e8721d51a7a3d0e2f1d8749
 *   04_management_test.go        3c7a4ac8186fe1307bac6857bfdb48fc190ed57f
 *   image.go                     3ec8a56d897bb89d482b41d4aac6ba01519f55f2  (JSON shapes of the test documents)
 *   00_conformance_suite_test.go 81bb239e0c8eebab51ad43171bf99fc1a39fea6e  (workflow order 01..04)
 *   HTTP client semantics from github.com/bloodorangeio/reggie (GetRelativeLocation/GetAbsoluteLocation/Errors).
 *
 * Spec count: 79 = Pull 24 + Push 29 + Content Discovery 16 + Content Management 10.
 *   Pull:       Setup 6, Pull blobs 4, Pull manifests 8, Error codes 1, Teardown 5
 *   Push:       Setup 0, Blob Upload Streamed 2, Blob Upload Monolithic 8, Blob Upload Chunked 6,
 *               Cross-Repository Blob Mount 6, Manifest Upload 4, Teardown 3
 *   Discovery:  Setup 5, listing tags 3, listing references 4, Teardown 4
 *   Management: Setup 4, Manifest delete 4, Blob delete 2, Teardown 0
 *
 * Configuration, as the suite runs with OCI_TEST_PULL=OCI_TEST_PUSH=OCI_TEST_CONTENT_DISCOVERY=
 * OCI_TEST_CONTENT_MANAGEMENT=1 and nothing else set: every workflow on, every setup on (no OCI_TAG_NAME /
 * OCI_MANIFEST_DIGEST / OCI_BLOB_DIGEST / OCI_TAG_LIST), OCI_DELETE_MANIFEST_BEFORE_BLOBS unset (so true: the
 * "Delete manifest" teardown specs come before the blob ones), OCI_CROSSMOUNT_NAMESPACE unset (so
 * "conformance-<uuid>"), OCI_AUTOMATIC_CROSSMOUNT read from the environment exactly as the suite does (unset by
 * default, which skips the two automatic cross-mount specs; set it to 0/false or 1/true to run one of them).
 *
 * Skips, as in ginkgo: specs whose RunOnlyIf condition is known up front are it.skip (by default "Get tag name
 * from environment", "Populate registry with test tags (no push)" and the two automatic cross-mount specs);
 * specs whose condition depends on an earlier response (e.g. 201 vs 202 on mount) return early and are listed,
 * with the suite's Warn() messages, on stderr after the run.
 *
 * Faithfulness notes: the Go client sends Content-Length from the body it actually sends (net/http ignores a
 * Content-Length set as a header, and sends 0 for a POST/PUT without body), and so does fetch, so the explicit
 * Content-Length headers of the Go source are implied by the bodies here rather than set. The one request the
 * suite sends as GET with a body ("400 response body should contain OCI-conforming JSON message") goes through
 * node:http, since fetch refuses a GET body.
 */
import { createHash, randomInt, randomBytes, randomUUID } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { systemMeta } from '@strata/events';
import { startTestApp, type TestApp } from '../support/test-app';

// ---------------------------------------------------------------------------------------------------------------
// setup.go: configuration
// ---------------------------------------------------------------------------------------------------------------

/** OCI_NAMESPACE: the repository every request goes to unless WithName says otherwise. */
const namespace = 'myorg/myrepo';
/** OCI_CROSSMOUNT_NAMESPACE unset: the suite makes a fresh one. */
const crossmountNamespace = `conformance-${randomUUID()}`;

const runPullSetup = true;
const runPushSetup = true;
const runContentDiscoverySetup = true;
const runContentManagementSetup = true;
const deleteManifestBeforeBlobs = true;

/** strconv.ParseBool */
function parseBool(v: string | undefined): boolean {
  return v !== undefined && ['1', 't', 'T', 'TRUE', 'true', 'True'].includes(v);
}
const runAutomaticCrossmountTest = process.env.OCI_AUTOMATIC_CROSSMOUNT !== undefined;
const automaticCrossmountEnabled = parseBool(process.env.OCI_AUTOMATIC_CROSSMOUNT);

const emptyLayerTestTag = 'emptylayer';
const testTagName = 'tagtest0';
const artifactTypeFilter = 'artifactType';
const nonexistentManifest = '.INVALID_MANIFEST_NAME';
const invalidManifestContent = Buffer.from('blablabla');

const errorCodes = [
  'BLOB_UNKNOWN',
  'BLOB_UPLOAD_INVALID',
  'BLOB_UPLOAD_UNKNOWN',
  'DIGEST_INVALID',
  'MANIFEST_BLOB_UNKNOWN',
  'MANIFEST_INVALID',
  'MANIFEST_UNKNOWN',
  'MANIFEST_UNVERIFIED',
  'NAME_INVALID',
  'NAME_UNKNOWN',
  'SIZE_INVALID',
  'TAG_INVALID',
  'UNAUTHORIZED',
  'DENIED',
  'UNSUPPORTED',
];
const UNSUPPORTED = 'UNSUPPORTED';

// ---------------------------------------------------------------------------------------------------------------
// setup.go + image.go: test content, serialised as Go's json.MarshalIndent(v, "", "\t") would
// ---------------------------------------------------------------------------------------------------------------

const digestOf = (data: Buffer | string): string =>
  `sha256:${createHash('sha256').update(data).digest('hex')}`;
/** json.MarshalIndent with a tab; keys are inserted in Go struct field order, []byte fields are base64. */
const marshalIndent = (v: unknown): Buffer => Buffer.from(JSON.stringify(v, null, '\t'));

interface TestBlob {
  content: Buffer;
  contentLength: string;
  digest: string;
}
const testBlob = (content: Buffer): TestBlob => ({
  content,
  contentLength: String(content.length),
  digest: digestOf(content),
});

/** image.go `descriptor`: mediaType, digest, size, [annotations], [data], [artifactType], newUnspecifiedField. */
function descriptor(d: {
  mediaType: string;
  digest: string;
  size: number;
  data?: Buffer;
  newUnspecifiedField?: Buffer;
}): Record<string, unknown> {
  const out: Record<string, unknown> = { mediaType: d.mediaType, digest: d.digest, size: d.size };
  if (d.data && d.data.length > 0) out.data = d.data.toString('base64');
  out.newUnspecifiedField = d.newUnspecifiedField ? d.newUnspecifiedField.toString('base64') : null;
  return out;
}

/** image.go `manifest`: schemaVersion, [mediaType], [artifactType], config, layers, [subject], [annotations]. */
function manifest(m: {
  mediaType?: string;
  artifactType?: string;
  config: Record<string, unknown>;
  layers: Record<string, unknown>[];
  subject?: Record<string, unknown>;
  annotations?: Record<string, string>;
}): Buffer {
  const out: Record<string, unknown> = { schemaVersion: 2 };
  if (m.mediaType) out.mediaType = m.mediaType;
  if (m.artifactType) out.artifactType = m.artifactType;
  out.config = m.config;
  out.layers = m.layers;
  if (m.subject) out.subject = m.subject;
  if (m.annotations) out.annotations = m.annotations;
  return marshalIndent(out);
}

/** setup.go randomString: 16 characters from this alphabet, from a CSPRNG. */
function randomString(n: number): string {
  const letters = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-';
  let s = '';
  for (let i = 0; i < n; i++) s += letters[randomInt(letters.length)];
  return s;
}

const numWorkflows = 16; // `numWorkflows` is the iota bit after pull|push|contentDiscovery|contentManagement: 1 << 4

/** A unique config per workflow index: the random author makes the digest unique per run. */
const configs: TestBlob[] = [];
for (let i = 0; i < numWorkflows; i++) {
  configs.push(
    testBlob(
      marshalIndent({
        author: randomString(16),
        architecture: 'amd64',
        os: 'linux',
        rootfs: { type: 'layers', diff_ids: [] },
      }),
    ),
  );
}

/** `echo 'you bothered to find out what was in here. Congratulations!' > test.txt; tar czvf` */
const layerBase64String =
  'H4sIAAAAAAAAA+3OQQrCMBCF4a49xXgBSUnaHMCTRBptQRNpp6i3t0UEV7oqIv7fYgbmzeJpHHSjVy0' +
  'WZCa1c/MufWVe94N3RWlrZ72x3k/30nhbFWKWLPU0Dhp6keJ8im//PuU/6pZH2WVtYx8b0Sz7LjWSR5VLG6YRBumSzOlGtjkd+qD' +
  'jMWiX07Befbs7AAAAAAAAAAAAAAAAAPyzO34MnqoAKAAA';
const layerBlobData = Buffer.from(layerBase64String, 'base64');
const layerBlobDigest = digestOf(layerBlobData);
const layers = [
  descriptor({
    mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
    size: layerBlobData.length,
    digest: layerBlobDigest,
  }),
];

const configDescriptor = (c: TestBlob): Record<string, unknown> =>
  descriptor({
    mediaType: 'application/vnd.oci.image.config.v1+json',
    digest: c.digest,
    size: c.content.length,
    data: c.content, // must be the config content
    newUnspecifiedField: Buffer.from('hello world'), // content doesn't matter
  });

/** A unique manifest per workflow index. */
const manifests: TestBlob[] = configs.map((c) =>
  testBlob(
    manifest({
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: configDescriptor(c),
      layers,
    }),
  ),
);

/** Used in the push test: no mediaType field, no layers. */
const emptyLayerManifestContent = manifest({ config: configDescriptor(configs[1]!), layers: [] });
const emptyLayerManifestDigest = digestOf(emptyLayerManifestContent);

/** setup.go randomBlob(42, seed+1): reproducible-by-seed in Go, plain random bytes here. */
const testBlobA = randomBytes(42);
const testBlobADigest = digestOf(testBlobA);

let testBlobB: Buffer;
let testBlobBDigest: string;
let testBlobBChunk1: Buffer;
let testBlobBChunk1Range: string;
let testBlobBChunk2: Buffer;
let testBlobBChunk2Range: string;
/** setup.go setupChunkedBlob: the first chunk is one byte longer than half. */
function setupChunkedBlob(size: number): void {
  testBlobB = randomBytes(size);
  testBlobBDigest = digestOf(testBlobB);
  testBlobBChunk1 = testBlobB.subarray(0, Math.floor(size / 2) + 1);
  testBlobBChunk1Range = `0-${testBlobBChunk1.length - 1}`;
  testBlobBChunk2 = testBlobB.subarray(Math.floor(size / 2) + 1);
  testBlobBChunk2Range = `${testBlobBChunk1.length}-${testBlobB.length - 1}`;
}
setupChunkedBlob(42);

// Referrers test: artifacts with the subject field set.
const emptyJSONBlob = Buffer.from('{}');
const emptyJSONDescriptorDigest = digestOf(emptyJSONBlob);
const emptyJSONDescriptor = descriptor({
  mediaType: 'application/vnd.oci.empty.v1+json',
  size: emptyJSONBlob.length,
  digest: emptyJSONDescriptorDigest,
});

const testRefBlobA = Buffer.from('NHL Peanut Butter on my NHL bagel');
const testRefBlobADigest = digestOf(testRefBlobA);
const testRefArtifactTypeA = 'application/vnd.nhl.peanut.butter.bagel';

const testRefBlobB = Buffer.from('NBA Strawberry Jam on my NBA croissant');
const testRefBlobBDigest = digestOf(testRefBlobB);
const testRefArtifactTypeB = 'application/vnd.nba.strawberry.jam.croissant';

const testAnnotationKey = 'org.opencontainers.conformance.test';
const testAnnotationValues: Record<string, string> = {};

const subjectOf = (m: TestBlob): Record<string, unknown> =>
  descriptor({
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    size: m.content.length,
    digest: m.digest,
  });

function annotated(content: Buffer, annotation?: string): { content: Buffer; digest: string } {
  const digest = digestOf(content);
  if (annotation !== undefined) testAnnotationValues[digest] = annotation;
  return { content, digest };
}

/** Artifact with subject, config.mediaType = artifactType. */
const refsManifestAConfigArtifact = annotated(
  manifest({
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: descriptor({
      mediaType: testRefArtifactTypeA,
      size: testRefBlobA.length,
      digest: testRefBlobADigest,
    }),
    layers: [emptyJSONDescriptor],
    subject: subjectOf(manifests[4]!),
    annotations: { [testAnnotationKey]: 'test config a' },
  }),
  'test config a',
);
const refsManifestBConfigArtifact = annotated(
  manifest({
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: descriptor({
      mediaType: testRefArtifactTypeB,
      size: testRefBlobB.length,
      digest: testRefBlobBDigest,
    }),
    layers: [emptyJSONDescriptor],
    subject: subjectOf(manifests[4]!),
    annotations: { [testAnnotationKey]: 'test config b' },
  }),
  'test config b',
);
/** Artifact with subject, artifactType set, config.mediaType = empty JSON. */
const refsManifestALayerArtifact = annotated(
  manifest({
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    artifactType: testRefArtifactTypeA,
    config: emptyJSONDescriptor,
    layers: [
      descriptor({ mediaType: testRefArtifactTypeA, size: testRefBlobA.length, digest: testRefBlobADigest }),
    ],
    subject: subjectOf(manifests[4]!),
    annotations: { [testAnnotationKey]: 'test layer a' },
  }),
  'test layer a',
);
const refsManifestBLayerArtifact = annotated(
  manifest({
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    artifactType: testRefArtifactTypeB,
    config: emptyJSONDescriptor,
    layers: [
      descriptor({ mediaType: testRefArtifactTypeB, size: testRefBlobB.length, digest: testRefBlobBDigest }),
    ],
    subject: subjectOf(manifests[4]!),
    annotations: { [testAnnotationKey]: 'test layer b' },
  }),
  'test layer b',
);
/** Same as B layer, on a subject (manifests[3]) that has not been pushed; no annotations. */
const refsManifestCLayerArtifact = annotated(
  manifest({
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    artifactType: testRefArtifactTypeB,
    config: emptyJSONDescriptor,
    layers: [
      descriptor({ mediaType: testRefArtifactTypeB, size: testRefBlobB.length, digest: testRefBlobBDigest }),
    ],
    subject: subjectOf(manifests[3]!),
  }),
);
const testRefArtifactTypeIndex = 'application/vnd.food.stand';
/** image.go `index`: schemaVersion, mediaType, artifactType, manifests, subject, annotations. */
const refsIndexArtifact = annotated(
  marshalIndent({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    artifactType: testRefArtifactTypeIndex,
    manifests: [
      descriptor({
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        size: refsManifestAConfigArtifact.content.length,
        digest: refsManifestAConfigArtifact.digest,
      }),
      descriptor({
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        size: refsManifestALayerArtifact.content.length,
        digest: refsManifestALayerArtifact.digest,
      }),
    ],
    subject: subjectOf(manifests[4]!),
    annotations: { [testAnnotationKey]: 'test index' },
  }),
  'test index',
);

const dummyDigest = digestOf('hello world');

// ---------------------------------------------------------------------------------------------------------------
// The client: reggie semantics over fetch
// ---------------------------------------------------------------------------------------------------------------

interface Res {
  status: number;
  headers: Headers;
  body: Buffer;
}

interface Req {
  /** The path as given to client.NewRequest, with <name> already substituted, or a relative Location. */
  path: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Buffer;
}

let base = '';

/** reggie NewRequest + resty: address + "/" + path, request query params appended after any already in the path. */
function requestUrl(r: Req): URL {
  const url = new URL(`${base}/${r.path.replace(/^\//, '')}`);
  for (const [k, v] of Object.entries(r.query ?? {})) {
    url.searchParams.delete(k);
    url.searchParams.append(k, v);
  }
  return url;
}

/** OCI_USERNAME / OCI_PASSWORD, as the suite reads them: with both set, reggie answers a Bearer challenge. */
const credentials =
  process.env.OCI_USERNAME && process.env.OCI_PASSWORD
    ? { username: process.env.OCI_USERNAME, password: process.env.OCI_PASSWORD }
    : null;

/**
 * reggie's auth: a 401 whose WWW-Authenticate is a Bearer challenge is answered by fetching a token from its realm
 * (service and scope as given, the credentials as Basic) and sending the request again with it.
 */
async function token(challenge: string): Promise<string | null> {
  if (!credentials || !/^Bearer /i.test(challenge)) return null;
  const params = new Map<string, string>();
  for (const m of challenge.matchAll(/([a-z]+)="([^"]*)"/gi)) params.set(m[1]!.toLowerCase(), m[2]!);
  const realm = params.get('realm');
  if (!realm) return null;
  const url = new URL(realm);
  for (const k of ['service', 'scope']) if (params.has(k)) url.searchParams.set(k, params.get(k)!);
  const basic = Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64');
  const res = await fetch(url, { headers: { authorization: `Basic ${basic}` } });
  if (res.status !== 200) return null;
  const body = (await res.json()) as { token?: string; access_token?: string };
  return body.token ?? body.access_token ?? null;
}

async function send(method: string, r: Req): Promise<Res> {
  const first = await sendOnce(method, r, {});
  const challenge = first.headers.get('www-authenticate');
  if (first.status !== 401 || challenge === null) return first;
  const bearer = await token(challenge);
  return bearer === null ? first : sendOnce(method, r, { authorization: `Bearer ${bearer}` });
}

async function sendOnce(method: string, r: Req, auth: Record<string, string>): Promise<Res> {
  const url = requestUrl(r);
  const headers = { 'user-agent': 'distribution-spec-conformance-tests', ...r.headers, ...auth };
  if ((method === 'GET' || method === 'HEAD') && r.body !== undefined)
    return sendRaw(method, url, headers, r.body);
  const res = await fetch(url, { method, headers, body: r.body });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

/** fetch will not send a body with GET; the Go client does, so this request goes out through node:http. */
function sendRaw(method: string, url: URL, headers: Record<string, string>, body: Buffer): Promise<Res> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      url,
      { method, headers: { ...headers, 'content-length': String(body.length) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const h = new Headers();
          for (const [k, v] of Object.entries(res.headers)) {
            if (Array.isArray(v)) for (const x of v) h.append(k, x);
            else if (v !== undefined) h.set(k, v);
          }
          resolve({ status: res.statusCode ?? 0, headers: h, body: Buffer.concat(chunks) });
        });
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

const GET = (r: Req): Promise<Res> => send('GET', r);
const HEAD = (r: Req): Promise<Res> => send('HEAD', r);
const POST = (r: Req): Promise<Res> => send('POST', r);
const PUT = (r: Req): Promise<Res> => send('PUT', r);
const PATCH = (r: Req): Promise<Res> => send('PATCH', r);
const DELETE = (r: Req): Promise<Res> => send('DELETE', r);

/** "/v2/<name>/..." with reggie's default name, or WithName. */
const v2 = (rest: string, name = namespace): string => `/v2/${name}${rest}`;

/** reggie GetRelativeLocation: path plus raw query of the Location header; "" when there is none. */
function getRelativeLocation(res: Res): string {
  const loc = res.headers.get('location') ?? '';
  if (loc === '') return '';
  const u = new URL(loc, 'http://relative.invalid');
  return u.pathname + u.search;
}
/** reggie GetAbsoluteLocation: the Location header as is. */
const getAbsoluteLocation = (res: Res): string => res.headers.get('location') ?? '';

/** reggie Errors(): the `errors` array of an OCI error body; an error when absent or empty. */
function responseErrors(res: Res): { code: string }[] {
  const parsed = JSON.parse(res.body.toString('utf8')) as { errors?: { code: string }[] };
  if (!parsed.errors || parsed.errors.length === 0)
    throw new Error('body was valid json but could not be parsed');
  return parsed.errors;
}

/** setup.go getTagList: the tags of a tag list body, [] when it does not parse. */
function getTagList(res: Res): string[] {
  try {
    return (JSON.parse(res.body.toString('utf8')) as { tags?: string[] | null }).tags ?? [];
  } catch {
    return [];
  }
}

interface IndexBody {
  manifests?: { digest: string; annotations?: Record<string, string> }[];
}
const parseIndex = (res: Res): IndexBody => JSON.parse(res.body.toString('utf8')) as IndexBody;

// Matchers the Go source uses again and again.
const expect2xx = (res: Res): void => {
  expect(res.status).toBeGreaterThanOrEqual(200);
  expect(res.status).toBeLessThan(300);
};
/** SatisfyAny(SatisfyAll(>=200, <300), Equal(one of `also`)). */
const expect2xxOr = (res: Res, ...also: number[]): void => {
  if (also.includes(res.status)) return;
  expect2xx(res);
};

/** POST then PUT ?digest= with the content: the setup pattern of every workflow. */
async function pushBlobMonolithic(digest: string, content: Buffer): Promise<Res> {
  const resp = await POST({ path: v2('/blobs/uploads/') });
  return PUT({
    path: getRelativeLocation(resp),
    query: { digest },
    headers: { 'content-type': 'application/octet-stream' },
    body: content,
  });
}
const putManifest = (reference: string, content: Buffer, mediaType: string): Promise<Res> =>
  PUT({ path: v2(`/manifests/${reference}`), headers: { 'content-type': mediaType }, body: content });
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

// ginkgo Skip()/Warn() raised from inside a spec: reported after the run.
const runtimeSkips: string[] = [];
const warnings: string[] = [];
/** RunOnlyIf evaluated at run time: false means "skip this spec" (the caller returns). */
function runOnlyIf(condition: boolean, spec: string): boolean {
  if (!condition) runtimeSkips.push(spec);
  return condition;
}
/** RunOnlyIf / RunOnlyIfNot on a value known before the run. */
const specIf = (condition: boolean): jest.It => (condition ? it : it.skip);

// ---------------------------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------------------------

describe('OCI Distribution Conformance Tests', () => {
  let t: TestApp;
  beforeAll(async () => {
    // With OCI_USERNAME/OCI_PASSWORD (conformance-auth.e2e.spec.ts sets them), against Strata with token auth on,
    // where that account may pull, push and delete everything and anonymous clients nothing.
    t = await startTestApp(credentials ? { env: { STRATA_AUTH: 'token' } } : {});
    if (credentials) {
      const meta = systemMeta('test');
      const identity = t.runtime.identity!;
      await identity.accounts.addAccount(credentials.username, 'user', credentials.password, meta);
      await identity.accounts.setGrant(
        { kind: 'user', name: credentials.username },
        '**',
        ['pull', 'push', 'delete'],
        meta,
      );
      await identity.directory.reload();
    }
    base = t.url;
  });
  afterAll(async () => {
    if (runtimeSkips.length > 0 || warnings.length > 0)
      process.stderr.write(
        `conformance: skipped at run time: ${JSON.stringify(runtimeSkips)}; warnings: ${JSON.stringify(warnings)}\n`,
      );
    expect(t.serverErrors()).toEqual([]);
    if (credentials) {
      // Every change was made by the suite's account; nothing was written anonymously.
      const actors = await t.database.pool.query<{ actor: string }>(
        `SELECT DISTINCT actor FROM events WHERE actor <> 'system:test'`,
      );
      expect(actors.rows.map((r) => r.actor)).toEqual([credentials.username]);
    }
    await t.close();
  });

  // ============================================================================================================
  // 01_pull_test.go
  // ============================================================================================================
  describe('Pull', () => {
    let tag = '';

    describe('Setup', () => {
      specIf(runPullSetup)('Populate registry with test blob', async () => {
        const resp = await pushBlobMonolithic(configs[0]!.digest, configs[0]!.content);
        expect2xx(resp);
      });

      specIf(runPullSetup)('Populate registry with test blob', async () => {
        const resp = await pushBlobMonolithic(configs[1]!.digest, configs[1]!.content);
        expect2xx(resp);
      });

      specIf(runPullSetup)('Populate registry with test layer', async () => {
        const resp = await pushBlobMonolithic(layerBlobDigest, layerBlobData);
        expect2xx(resp);
      });

      specIf(runPullSetup)('Populate registry with test manifest', async () => {
        tag = testTagName;
        const resp = await putManifest(tag, manifests[0]!.content, OCI_MANIFEST);
        expect2xx(resp);
      });

      specIf(runPullSetup)('Populate registry with test manifest', async () => {
        const resp = await putManifest(manifests[1]!.digest, manifests[1]!.content, OCI_MANIFEST);
        expect2xx(resp);
      });

      specIf(!runPullSetup)('Get tag name from environment', () => {
        const tmp = process.env.OCI_TAG_NAME ?? '';
        if (tmp !== '') tag = tmp;
      });
    });

    describe('Pull blobs', () => {
      it('HEAD request to nonexistent blob should result in 404 response', async () => {
        const resp = await HEAD({ path: v2(`/blobs/${dummyDigest}`) });
        expect(resp.status).toBe(404);
      });

      it('HEAD request to existing blob should yield 200', async () => {
        const resp = await HEAD({ path: v2(`/blobs/${configs[0]!.digest}`) });
        expect(resp.status).toBe(200);
        const h = resp.headers.get('docker-content-digest');
        if (h) expect(h).toBe(configs[0]!.digest);
      });

      it('GET nonexistent blob should result in 404 response', async () => {
        const resp = await GET({ path: v2(`/blobs/${dummyDigest}`) });
        expect(resp.status).toBe(404);
      });

      it('GET request to existing blob URL should yield 200', async () => {
        const resp = await GET({ path: v2(`/blobs/${configs[0]!.digest}`) });
        expect(resp.status).toBe(200);
      });
    });

    describe('Pull manifests', () => {
      it('HEAD request to nonexistent manifest should return 404', async () => {
        const resp = await HEAD({ path: v2(`/manifests/${nonexistentManifest}`) });
        expect(resp.status).toBe(404);
      });

      it('HEAD request to manifest[0] path (digest) should yield 200 response', async () => {
        const resp = await HEAD({
          path: v2(`/manifests/${manifests[0]!.digest}`),
          headers: { accept: OCI_MANIFEST },
        });
        expect(resp.status).toBe(200);
        const h = resp.headers.get('docker-content-digest');
        if (h) expect(h).toBe(manifests[0]!.digest);
      });

      it('HEAD request to manifest[1] path (digest) should yield 200 response', async () => {
        const resp = await HEAD({
          path: v2(`/manifests/${manifests[1]!.digest}`),
          headers: { accept: OCI_MANIFEST },
        });
        expect(resp.status).toBe(200);
        const h = resp.headers.get('docker-content-digest');
        if (h) expect(h).toBe(manifests[1]!.digest);
      });

      it('HEAD request to manifest path (tag) should yield 200 response', async () => {
        expect(tag).not.toBe('');
        const resp = await HEAD({ path: v2(`/manifests/${tag}`), headers: { accept: OCI_MANIFEST } });
        expect(resp.status).toBe(200);
        const h = resp.headers.get('docker-content-digest');
        if (h) expect(h).toBe(manifests[0]!.digest);
      });

      it('GET nonexistent manifest should return 404', async () => {
        const resp = await GET({ path: v2(`/manifests/${nonexistentManifest}`) });
        expect(resp.status).toBe(404);
      });

      it('GET request to manifest[0] path (digest) should yield 200 response', async () => {
        const resp = await GET({
          path: v2(`/manifests/${manifests[0]!.digest}`),
          headers: { accept: OCI_MANIFEST },
        });
        expect(resp.status).toBe(200);
      });

      it('GET request to manifest[1] path (digest) should yield 200 response', async () => {
        const resp = await GET({
          path: v2(`/manifests/${manifests[1]!.digest}`),
          headers: { accept: OCI_MANIFEST },
        });
        expect(resp.status).toBe(200);
      });

      it('GET request to manifest path (tag) should yield 200 response', async () => {
        expect(tag).not.toBe('');
        const resp = await GET({ path: v2(`/manifests/${tag}`), headers: { accept: OCI_MANIFEST } });
        expect(resp.status).toBe(200);
      });
    });

    describe('Error codes', () => {
      it('400 response body should contain OCI-conforming JSON message', async () => {
        const resp = await GET({
          path: v2('/manifests/sha256:totallywrong'),
          headers: { 'content-type': OCI_MANIFEST },
          body: invalidManifestContent,
        });
        expect([400, 404]).toContain(resp.status);
        if (resp.status === 400) {
          const errorResponses = responseErrors(resp);
          expect(errorResponses).not.toHaveLength(0);
          expect(errorCodes).toContain(errorResponses[0]!.code);
        }
      });
    });

    describe('Teardown', () => {
      if (deleteManifestBeforeBlobs) {
        specIf(runPullSetup)('Delete manifest[0] created in setup', async () => {
          const resp = await DELETE({ path: v2(`/manifests/${manifests[0]!.digest}`) });
          expect2xxOr(resp, 405);
        });
        specIf(runPullSetup)('Delete manifest[1] created in setup', async () => {
          const resp = await DELETE({ path: v2(`/manifests/${manifests[1]!.digest}`) });
          expect2xxOr(resp, 405);
        });
      }

      specIf(runPullSetup)('Delete config[0] blob created in setup', async () => {
        const resp = await DELETE({ path: v2(`/blobs/${configs[0]!.digest}`) });
        expect2xxOr(resp, 404, 405);
      });
      specIf(runPullSetup)('Delete config[1] blob created in setup', async () => {
        const resp = await DELETE({ path: v2(`/blobs/${configs[1]!.digest}`) });
        expect2xxOr(resp, 404, 405);
      });

      specIf(runPullSetup)('Delete layer blob created in setup', async () => {
        const resp = await DELETE({ path: v2(`/blobs/${layerBlobDigest}`) });
        expect2xxOr(resp, 404, 405);
      });

      if (!deleteManifestBeforeBlobs) {
        specIf(runPullSetup)('Delete manifest[0] created in setup', async () => {
          const resp = await DELETE({ path: v2(`/manifests/${manifests[0]!.digest}`) });
          expect2xxOr(resp, 405);
        });
        specIf(runPullSetup)('Delete manifest[1] created in setup', async () => {
          const resp = await DELETE({ path: v2(`/manifests/${manifests[1]!.digest}`) });
          expect2xxOr(resp, 405);
        });
      }
    });
  });

  // ============================================================================================================
  // 02_push_test.go
  // ============================================================================================================
  describe('Push', () => {
    let lastResponse: Res | undefined;
    let prevResponse: Res | undefined;
    let emptyLayerManifestRef = '';

    // Setup: "No setup required at this time for push tests".

    describe('Blob Upload Streamed', () => {
      it('PATCH request with blob in body should yield 202 response', async () => {
        let resp = await POST({ path: v2('/blobs/uploads/') });
        const location = resp.headers.get('location') ?? '';
        expect(location).not.toBe('');

        resp = await PATCH({
          path: getRelativeLocation(resp),
          headers: { 'content-type': 'application/octet-stream' },
          body: testBlobA,
        });
        expect(resp.status).toBe(202);
        lastResponse = resp;
      });

      it('PUT request to session URL with digest should yield 201 response', async () => {
        expect(lastResponse).toBeDefined();
        // Go sets Content-Length: len(testBlobA) as a header, but net/http sends the length of the (absent) body: 0.
        const resp = await PUT({
          path: getRelativeLocation(lastResponse!),
          query: { digest: testBlobADigest },
          headers: { 'content-type': 'application/octet-stream' },
        });
        expect(resp.status).toBe(201);
        const location = resp.headers.get('location') ?? '';
        expect(location).not.toBe('');
      });
    });

    describe('Blob Upload Monolithic', () => {
      it('GET nonexistent blob should result in 404 response', async () => {
        const resp = await GET({ path: v2(`/blobs/${dummyDigest}`) });
        expect(resp.status).toBe(404);
      });

      it('POST request with digest and blob should yield a 201 or 202', async () => {
        const resp = await POST({
          path: v2('/blobs/uploads/'),
          headers: { 'content-type': 'application/octet-stream' },
          query: { digest: configs[1]!.digest },
          body: configs[1]!.content,
        });
        const location = resp.headers.get('location') ?? '';
        expect(location).not.toBe('');
        expect([201, 202]).toContain(resp.status);
        lastResponse = resp;
      });

      it('GET request to blob URL from prior request should yield 200 or 404 based on response code', async () => {
        expect(lastResponse).toBeDefined();
        const resp = await GET({ path: v2(`/blobs/${configs[1]!.digest}`) });
        if (lastResponse!.status === 202) expect(resp.status).toBe(404);
        else expect(resp.status).toBe(200);
      });

      it('POST request should yield a session ID', async () => {
        const resp = await POST({ path: v2('/blobs/uploads/') });
        expect(resp.status).toBe(202);
        lastResponse = resp;
      });

      it('PUT upload of a blob should yield a 201 Response', async () => {
        const resp = await PUT({
          path: getRelativeLocation(lastResponse!),
          headers: { 'content-type': 'application/octet-stream' },
          query: { digest: configs[1]!.digest },
          body: configs[1]!.content,
        });
        const location = resp.headers.get('location') ?? '';
        expect(location).not.toBe('');
        expect(resp.status).toBe(201);
      });

      it('GET request to existing blob should yield 200 response', async () => {
        const resp = await GET({ path: v2(`/blobs/${configs[1]!.digest}`) });
        expect(resp.status).toBe(200);
      });

      it('PUT upload of a layer blob should yield a 201 Response', async () => {
        let resp = await POST({ path: v2('/blobs/uploads/') });
        resp = await PUT({
          path: getRelativeLocation(resp),
          headers: { 'content-type': 'application/octet-stream' },
          query: { digest: layerBlobDigest },
          body: layerBlobData,
        });
        const location = resp.headers.get('location') ?? '';
        expect(location).not.toBe('');
        expect(resp.status).toBe(201);
      });

      it('GET request to existing layer should yield 200 response', async () => {
        const resp = await GET({ path: v2(`/blobs/${layerBlobDigest}`) });
        expect(resp.status).toBe(200);
      });
    });

    describe('Blob Upload Chunked', () => {
      it('Out-of-order blob upload should return 416', async () => {
        let resp = await POST({ path: v2('/blobs/uploads/') });
        const location = resp.headers.get('location') ?? '';
        expect(location).not.toBe('');

        // rebuild chunked blob if min size is above our chunk size
        const minSizeStr = resp.headers.get('oci-chunk-min-length') ?? '';
        if (minSizeStr !== '') {
          expect(minSizeStr).toMatch(/^[+-]?\d+$/);
          const minSize = Number(minSizeStr);
          if (minSize > testBlobBChunk1.length) setupChunkedBlob(minSize * 2 - 2);
        }

        resp = await PATCH({
          path: getRelativeLocation(resp),
          headers: { 'content-type': 'application/octet-stream', 'content-range': testBlobBChunk2Range },
          body: testBlobBChunk2,
        });
        expect(resp.status).toBe(416);
      });

      it('PATCH request with first chunk should return 202', async () => {
        let resp = await POST({ path: v2('/blobs/uploads/') });
        const location = resp.headers.get('location') ?? '';
        expect(location).not.toBe('');
        prevResponse = resp;
        resp = await PATCH({
          path: getRelativeLocation(resp),
          headers: { 'content-type': 'application/octet-stream', 'content-range': testBlobBChunk1Range },
          body: testBlobBChunk1,
        });
        expect(resp.status).toBe(202);
        expect(resp.headers.get('range') ?? '').toBe(testBlobBChunk1Range);
        lastResponse = resp;
      });

      it('Retry previous blob chunk should return 416', async () => {
        const resp = await PATCH({
          path: getRelativeLocation(prevResponse!),
          headers: { 'content-type': 'application/octet-stream', 'content-range': testBlobBChunk1Range },
          body: testBlobBChunk1,
        });
        expect(resp.status).toBe(416);
      });

      it('Get on stale blob upload should return 204 with a range and location', async () => {
        const resp = await GET({ path: getRelativeLocation(prevResponse!) });
        expect(resp.status).toBe(204);
        expect(resp.headers.get('location') ?? '').not.toBe('');
        expect(resp.headers.get('range') ?? '').toBe(testBlobBChunk1Range);
        lastResponse = resp;
      });

      it('PATCH request with second chunk should return 202', async () => {
        const resp = await PATCH({
          path: getRelativeLocation(lastResponse!),
          headers: { 'content-range': testBlobBChunk2Range, 'content-type': 'application/octet-stream' },
          body: testBlobBChunk2,
        });
        const location = resp.headers.get('location') ?? '';
        expect(resp.status).toBe(202);
        expect(location).not.toBe('');
        lastResponse = resp;
      });

      it('PUT request with digest should return 201', async () => {
        const resp = await PUT({
          path: getRelativeLocation(lastResponse!),
          headers: { 'content-type': 'application/octet-stream' },
          query: { digest: testBlobBDigest },
        });
        expect(resp.status).toBe(201);
        const location = resp.headers.get('location') ?? '';
        expect(location).not.toBe('');
      });
    });

    describe('Cross-Repository Blob Mount', () => {
      it('Cross-mounting of a blob without the from argument should yield session id', async () => {
        const resp = await POST({
          path: v2('/blobs/uploads/', crossmountNamespace),
          query: { mount: dummyDigest },
        });
        expect(resp.status).toBe(202);
        expect(getAbsoluteLocation(resp)).not.toBe('');
      });

      it("POST request to mount another repository's blob should return 201 or 202", async () => {
        const resp = await POST({
          path: v2('/blobs/uploads/', crossmountNamespace),
          query: { mount: testBlobADigest, from: namespace },
        });
        expect([201, 202]).toContain(resp.status);
        lastResponse = resp;
      });

      it('GET request to test digest within cross-mount namespace should return 200', async () => {
        const spec =
          'Push/Cross-Repository Blob Mount/GET request to test digest within cross-mount namespace';
        if (!runOnlyIf(lastResponse!.status === 201, spec)) return;
        expect(getRelativeLocation(lastResponse!)).toBe(
          `/v2/${crossmountNamespace}/blobs/${testBlobADigest}`,
        );
        const resp = await GET({ path: getRelativeLocation(lastResponse!) });
        expect(resp.status).toBe(200);
      });

      it('Cross-mounting of nonexistent blob should yield session id', () => {
        const spec =
          'Push/Cross-Repository Blob Mount/Cross-mounting of nonexistent blob should yield session id';
        if (!runOnlyIf(lastResponse!.status === 202, spec)) return;
        expect(
          getRelativeLocation(lastResponse!).startsWith(`/v2/${crossmountNamespace}/blobs/uploads/`),
        ).toBe(true);
      });

      specIf(runAutomaticCrossmountTest && automaticCrossmountEnabled)(
        'Cross-mounting without from, and automatic content discovery enabled should return a 201',
        async () => {
          const spec = 'Push/Cross-Repository Blob Mount/Cross-mounting without from (automatic enabled)';
          if (!runOnlyIf(lastResponse!.status === 201, spec)) return;
          const resp = await POST({
            path: v2('/blobs/uploads/', crossmountNamespace),
            query: { mount: testBlobADigest },
          });
          expect(resp.status).toBe(201);
        },
      );

      specIf(runAutomaticCrossmountTest && !automaticCrossmountEnabled)(
        'Cross-mounting without from, and automatic content discovery disabled should return a 202',
        async () => {
          const spec = 'Push/Cross-Repository Blob Mount/Cross-mounting without from (automatic disabled)';
          if (!runOnlyIf(lastResponse!.status === 201, spec)) return;
          const resp = await POST({
            path: v2('/blobs/uploads/', crossmountNamespace),
            query: { mount: testBlobADigest },
          });
          expect(resp.status).toBe(202);
        },
      );
    });

    describe('Manifest Upload', () => {
      it('GET nonexistent manifest should return 404', async () => {
        const resp = await GET({ path: v2(`/manifests/${nonexistentManifest}`) });
        expect(resp.status).toBe(404);
      });

      it('PUT should accept a manifest upload', async () => {
        for (let i = 0; i < 4; i++) {
          const tag = `test${i}`;
          const resp = await putManifest(tag, manifests[1]!.content, OCI_MANIFEST);
          const location = resp.headers.get('location') ?? '';
          expect(location).not.toBe('');
          expect(resp.status).toBe(201);
        }
      });

      it('Registry should accept a manifest upload with no layers', async () => {
        const resp = await putManifest(emptyLayerTestTag, emptyLayerManifestContent, OCI_MANIFEST);
        if (resp.status === 201) {
          const location = resp.headers.get('location') ?? '';
          emptyLayerManifestRef = location;
          expect(location).not.toBe('');
          expect(resp.status).toBe(201);
        } else {
          warnings.push('image manifest with no layers is not supported');
        }
      });

      it('GET request to manifest URL (digest) should yield 200 response', async () => {
        const resp = await GET({
          path: v2(`/manifests/${manifests[1]!.digest}`),
          headers: { accept: OCI_MANIFEST },
        });
        expect(resp.status).toBe(200);
      });
    });

    describe('Teardown', () => {
      if (deleteManifestBeforeBlobs) {
        specIf(runPushSetup)('Delete manifest created in tests', async () => {
          let resp = await DELETE({ path: v2(`/manifests/${manifests[1]!.digest}`) });
          expect2xxOr(resp, 405);
          if (emptyLayerManifestRef !== '') {
            resp = await DELETE({ path: v2(`/manifests/${emptyLayerManifestDigest}`) });
            expect2xxOr(resp, 405);
          }
        });
      }

      specIf(runPushSetup)('Delete config blob created in tests', async () => {
        const resp = await DELETE({ path: v2(`/blobs/${configs[1]!.digest}`) });
        expect2xxOr(resp, 404, 405);
      });

      specIf(runPushSetup)('Delete layer blob created in setup', async () => {
        const resp = await DELETE({ path: v2(`/blobs/${layerBlobDigest}`) });
        expect2xxOr(resp, 404, 405);
      });

      if (!deleteManifestBeforeBlobs) {
        specIf(runPushSetup)('Delete manifest created in tests', async () => {
          let resp = await DELETE({ path: v2(`/manifests/${manifests[1]!.digest}`) });
          expect2xxOr(resp, 405);
          if (emptyLayerManifestRef !== '') {
            resp = await DELETE({ path: v2(`/manifests/${emptyLayerManifestDigest}`) });
            expect2xxOr(resp, 405);
          }
        });
      }
    });
  });

  // ============================================================================================================
  // 03_discovery_test.go
  // ============================================================================================================
  describe('Content Discovery', () => {
    let numTags = 4;
    let tagList: string[] = [];

    describe('Setup', () => {
      specIf(runContentDiscoverySetup)('Populate registry with test blob', async () => {
        const resp = await pushBlobMonolithic(configs[2]!.digest, configs[2]!.content);
        expect2xx(resp);
      });

      specIf(runContentDiscoverySetup)('Populate registry with test layer', async () => {
        const resp = await pushBlobMonolithic(layerBlobDigest, layerBlobData);
        expect2xx(resp);
      });

      specIf(runContentDiscoverySetup)('Populate registry with test tags', async () => {
        for (let i = 0; i < numTags; i++) {
          const tag = `test${i}`;
          tagList.push(tag);
          const resp = await putManifest(tag, manifests[2]!.content, OCI_MANIFEST);
          expect2xx(resp);
        }
        const resp = await GET({ path: v2('/tags/list') });
        tagList = getTagList(resp);
      });

      specIf(!runContentDiscoverySetup)('Populate registry with test tags (no push)', () => {
        tagList = (process.env.OCI_TAG_LIST ?? '').split(',');
      });

      specIf(runContentDiscoverySetup)('References setup', async () => {
        // Populate registry with empty JSON blob; validate expected empty JSON blob digest
        expect(emptyJSONDescriptorDigest).toBe(
          'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a',
        );
        let resp = await pushBlobMonolithic(emptyJSONDescriptorDigest, emptyJSONBlob);
        expect2xx(resp);

        // Populate registry with reference blob before the image manifest is pushed
        resp = await pushBlobMonolithic(testRefBlobADigest, testRefBlobA);
        expect2xx(resp);

        // Populate registry with test references manifest (config.MediaType = artifactType)
        resp = await putManifest(
          refsManifestAConfigArtifact.digest,
          refsManifestAConfigArtifact.content,
          OCI_MANIFEST,
        );
        expect2xx(resp);
        expect(resp.headers.get('oci-subject') ?? '').toBe(manifests[4]!.digest);

        // Populate registry with test references manifest (ArtifactType, config.MediaType = emptyJSON)
        resp = await putManifest(
          refsManifestALayerArtifact.digest,
          refsManifestALayerArtifact.content,
          OCI_MANIFEST,
        );
        expect2xx(resp);
        expect(resp.headers.get('oci-subject') ?? '').toBe(manifests[4]!.digest);

        // Populate registry with test index manifest
        resp = await putManifest(refsIndexArtifact.digest, refsIndexArtifact.content, OCI_INDEX);
        expect2xx(resp);
        expect(resp.headers.get('oci-subject') ?? '').toBe(manifests[4]!.digest);

        // Populate registry with test blob
        resp = await pushBlobMonolithic(configs[4]!.digest, configs[4]!.content);
        expect2xx(resp);

        // Populate registry with test layer
        resp = await pushBlobMonolithic(layerBlobDigest, layerBlobData);
        expect2xx(resp);

        // Populate registry with test manifest
        const tag = testTagName;
        resp = await putManifest(tag, manifests[4]!.content, OCI_MANIFEST);
        expect2xx(resp);

        // Populate registry with reference blob after the image manifest is pushed
        resp = await pushBlobMonolithic(testRefBlobBDigest, testRefBlobB);
        expect2xx(resp);

        // Populate registry with test references manifest (config.MediaType = artifactType)
        resp = await putManifest(
          refsManifestBConfigArtifact.digest,
          refsManifestBConfigArtifact.content,
          OCI_MANIFEST,
        );
        expect2xx(resp);
        expect(resp.headers.get('oci-subject') ?? '').toBe(manifests[4]!.digest);

        // Populate registry with test references manifest (ArtifactType, config.MediaType = emptyJSON)
        resp = await putManifest(
          refsManifestBLayerArtifact.digest,
          refsManifestBLayerArtifact.content,
          OCI_MANIFEST,
        );
        expect2xx(resp);
        expect(resp.headers.get('oci-subject') ?? '').toBe(manifests[4]!.digest);

        // Populate registry with test references manifest to a non-existent subject
        resp = await putManifest(
          refsManifestCLayerArtifact.digest,
          refsManifestCLayerArtifact.content,
          OCI_MANIFEST,
        );
        expect2xx(resp);
        expect(resp.headers.get('oci-subject') ?? '').toBe(manifests[3]!.digest);
      });
    });

    describe('Test content discovery endpoints (listing tags)', () => {
      it('GET request to list tags should yield 200 response', async () => {
        const resp = await GET({ path: v2('/tags/list') });
        expect(resp.status).toBe(200);
        tagList = getTagList(resp);
        numTags = tagList.length;
      });

      it('GET number of tags should be limitable by `n` query parameter', async () => {
        const numResults = Math.trunc(numTags / 2);
        const resp = await GET({ path: v2('/tags/list'), query: { n: String(numResults) } });
        expect(resp.status).toBe(200);
        tagList = getTagList(resp);
        expect(tagList.length).toBe(numResults);
      });

      it('GET start of tag is set by `last` query parameter', async () => {
        const numResults = Math.trunc(numTags / 2);
        let resp = await GET({ path: v2('/tags/list'), query: { n: String(numResults) } });
        tagList = getTagList(resp);
        const last = tagList[numResults - 1];
        if (last === undefined) throw new Error('index out of range (where the Go suite panics)');
        resp = await GET({ path: v2('/tags/list'), query: { n: String(numResults), last } });
        expect(resp.status).toBe(200);
        // As in the Go source, tagList is the first page here: the second response is only checked for 200.
        expect(tagList.length).toBeLessThanOrEqual(numResults);
        expect(tagList).toContain(tagList[numResults - 1]);
      });
    });

    describe('Test content discovery endpoints (listing references)', () => {
      it('GET request to nonexistent blob should result in empty 200 response', async () => {
        const resp = await GET({ path: v2(`/referrers/${dummyDigest}`) });
        expect(resp.status).toBe(200);
        expect(resp.headers.get('content-type') ?? '').toBe(OCI_INDEX);

        const index = parseIndex(resp);
        expect(index.manifests ?? []).toHaveLength(0);
      });

      it('GET request to existing blob should yield 200', async () => {
        const resp = await GET({ path: v2(`/referrers/${manifests[4]!.digest}`) });
        expect(resp.status).toBe(200);
        expect(resp.headers.get('content-type') ?? '').toBe(OCI_INDEX);

        const found = parseIndex(resp).manifests ?? [];
        expect(found).toHaveLength(5);
        expect(found[0]!.digest).not.toBe(found[1]!.digest);
        for (const m of found) {
          expect(Object.keys(m.annotations ?? {})).toHaveLength(1);
          expect(m.annotations?.[testAnnotationKey] ?? '').toBe(testAnnotationValues[m.digest] ?? '');
        }
      });

      it('GET request to existing blob with filter should yield 200', async () => {
        const resp = await GET({
          path: v2(`/referrers/${manifests[4]!.digest}`),
          query: { artifactType: testRefArtifactTypeA },
        });
        expect(resp.status).toBe(200);
        expect(resp.headers.get('content-type') ?? '').toBe(OCI_INDEX);

        const found = parseIndex(resp).manifests ?? [];

        // also check resp header "OCI-Filters-Applied: artifactType" denoting that an artifactType filter was applied
        if ((resp.headers.get('oci-filters-applied') ?? '') !== '') {
          expect(found).toHaveLength(2);
          expect(resp.headers.get('oci-filters-applied')).toBe(artifactTypeFilter);
        } else {
          expect(found).toHaveLength(5);
          warnings.push('filtering by artifact-type is not implemented');
        }
        for (const m of found) {
          expect(Object.keys(m.annotations ?? {})).toHaveLength(1);
          expect(m.annotations?.[testAnnotationKey] ?? '').toBe(testAnnotationValues[m.digest] ?? '');
        }
      });

      it('GET request to missing manifest should yield 200', async () => {
        const resp = await GET({ path: v2(`/referrers/${manifests[3]!.digest}`) });
        expect(resp.status).toBe(200);
        expect(resp.headers.get('content-type') ?? '').toBe(OCI_INDEX);

        const found = parseIndex(resp).manifests ?? [];
        expect(found).toHaveLength(1);
        expect(found[0]!.digest).toBe(refsManifestCLayerArtifact.digest);
      });
    });

    describe('Teardown', () => {
      const createdReferences = (): string[] => [
        refsIndexArtifact.digest,
        manifests[2]!.digest,
        manifests[4]!.digest,
        refsManifestAConfigArtifact.digest,
        refsManifestALayerArtifact.digest,
        testTagName,
        refsManifestBConfigArtifact.digest,
        refsManifestBLayerArtifact.digest,
        refsManifestCLayerArtifact.digest,
      ];

      if (deleteManifestBeforeBlobs) {
        specIf(runContentDiscoverySetup)('Delete created manifest & associated tags', async () => {
          for (const ref of createdReferences()) {
            const resp = await DELETE({ path: v2(`/manifests/${ref}`) });
            expect2xxOr(resp, 405, 404);
          }
        });
      }

      specIf(runContentDiscoverySetup)('Delete config blob created in tests', async () => {
        const resp = await DELETE({ path: v2(`/blobs/${configs[2]!.digest}`) });
        expect2xxOr(resp, 405);
      });

      specIf(runContentDiscoverySetup)('Delete layer blob created in setup', async () => {
        const resp = await DELETE({ path: v2(`/blobs/${layerBlobDigest}`) });
        expect2xxOr(resp, 405);
      });

      if (!deleteManifestBeforeBlobs) {
        specIf(runContentDiscoverySetup)('Delete created manifest & associated tags', async () => {
          for (const ref of createdReferences()) {
            const resp = await DELETE({ path: v2(`/manifests/${ref}`) });
            expect2xxOr(resp, 405, 404);
          }
        });
      }

      specIf(runContentDiscoverySetup)('References teardown', async () => {
        const deleteReq = async (path: string): Promise<void> => {
          const resp = await DELETE({ path });
          expect2xxOr(resp, 405, 404);
        };
        const deleteManifests = async (): Promise<void> => {
          await deleteReq(v2(`/manifests/${refsIndexArtifact.digest}`));
          await deleteReq(v2(`/manifests/${refsManifestAConfigArtifact.digest}`));
          await deleteReq(v2(`/manifests/${refsManifestALayerArtifact.digest}`));
          await deleteReq(v2(`/manifests/${manifests[4]!.digest}`));
          await deleteReq(v2(`/manifests/${refsManifestBConfigArtifact.digest}`));
          await deleteReq(v2(`/manifests/${refsManifestBLayerArtifact.digest}`));
        };

        if (deleteManifestBeforeBlobs) await deleteManifests();

        // Delete config blob created in setup
        await deleteReq(v2(`/blobs/${configs[4]!.digest}`));

        // Delete reference blob created in setup
        await deleteReq(v2(`/blobs/${testRefBlobADigest}`));
        await deleteReq(v2(`/blobs/${testRefBlobBDigest}`));

        // Delete empty JSON blob created in setup
        await deleteReq(v2(`/blobs/${emptyJSONDescriptorDigest}`));

        if (!deleteManifestBeforeBlobs) await deleteManifests();
      });
    });
  });

  // ============================================================================================================
  // 04_management_test.go
  // ============================================================================================================
  describe('Content Management', () => {
    const defaultTagName = 'tagtest0';
    let tagToDelete = '';
    let numTags = 0;
    let blobDeleteAllowed = true;

    describe('Setup', () => {
      specIf(runContentManagementSetup)('Populate registry with test config blob', async () => {
        const resp = await pushBlobMonolithic(configs[3]!.digest, configs[3]!.content);
        expect2xx(resp);
      });

      specIf(runContentManagementSetup)('Populate registry with test layer', async () => {
        const resp = await pushBlobMonolithic(layerBlobDigest, layerBlobData);
        expect2xx(resp);
      });

      specIf(runContentManagementSetup)('Populate registry with test tag', async () => {
        tagToDelete = defaultTagName;
        const resp = await putManifest(tagToDelete, manifests[3]!.content, OCI_MANIFEST);
        expect2xx(resp);
      });

      specIf(runContentManagementSetup)(
        'Check how many tags there are before anything gets deleted',
        async () => {
          const resp = await GET({ path: v2('/tags/list') });
          expect(resp.status).toBe(200);
          const tags = (JSON.parse(resp.body.toString('utf8')) as { tags?: string[] | null }).tags ?? [];
          numTags = tags.length;
        },
      );
    });

    describe('Manifest delete', () => {
      it('DELETE request to manifest tag should return 202, unless tag deletion is disallowed (400/405)', async () => {
        const resp = await DELETE({ path: v2(`/manifests/${tagToDelete}`) });
        expect([400, 202, 405]).toContain(resp.status);
        if (resp.status === 400) {
          const errorResponses = responseErrors(resp);
          expect(errorResponses).not.toHaveLength(0);
          expect(errorResponses[0]!.code).toBe(UNSUPPORTED);
        }
      });

      it('DELETE request to manifest (digest) should yield 202 response unless already deleted', async () => {
        const resp = await DELETE({ path: v2(`/manifests/${manifests[3]!.digest}`) });
        // In the case that the previous request was accepted, this may or may not fail (which is ok)
        expect([202, 404]).toContain(resp.status);
      });

      it('GET request to deleted manifest URL should yield 404 response, unless delete is disallowed', async () => {
        const resp = await GET({ path: v2(`/manifests/${manifests[3]!.digest}`) });
        expect([404, 200]).toContain(resp.status);
      });

      it('GET request to tags list should reflect manifest deletion', async () => {
        const resp = await GET({ path: v2('/tags/list') });
        expect(resp.status).toBe(200);
        const tags = (JSON.parse(resp.body.toString('utf8')) as { tags?: string[] | null }).tags ?? [];
        expect(tags.length).toBeLessThan(numTags);
      });
    });

    describe('Blob delete', () => {
      specIf(runContentManagementSetup)('DELETE request to blob URL should yield 202 response', async () => {
        // config blob
        let resp = await DELETE({ path: v2(`/blobs/${configs[3]!.digest}`) });
        expect([202, 404, 405]).toContain(resp.status);
        // layer blob
        resp = await DELETE({ path: v2(`/blobs/${layerBlobDigest}`) });
        expect([202, 404, 405]).toContain(resp.status);
        if (resp.status === 405) blobDeleteAllowed = false;
      });

      specIf(runContentManagementSetup)(
        'GET request to deleted blob URL should yield 404 response',
        async () => {
          const spec =
            'Content Management/Blob delete/GET request to deleted blob URL should yield 404 response';
          if (!runOnlyIf(blobDeleteAllowed, spec)) return;
          const resp = await GET({ path: v2(`/blobs/${configs[3]!.digest}`) });
          expect(resp.status).toBe(404);
        },
      );
    });

    // Teardown: "No teardown required at this time for content management tests".
  });
});
