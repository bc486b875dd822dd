import { createHash, randomBytes } from 'node:crypto';

export const sha256 = (data: Buffer | string): string =>
  `sha256:${createHash('sha256').update(data).digest('hex')}`;

export function randomBlob(size: number): { data: Buffer; digest: string } {
  const data = randomBytes(size);
  return { data, digest: sha256(data) };
}

/** The OCI error codes of a response body. */
export async function errorCodes(res: Response): Promise<string[]> {
  const body = (await res.json()) as { errors?: { code: string }[] };
  return (body.errors ?? []).map((e) => e.code);
}

/** Pushes a blob in one POST+PUT, as docker does for small layers; returns the PUT response. */
export async function pushBlob(base: string, repo: string, data: Buffer, digest?: string): Promise<Response> {
  const post = await fetch(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  if (post.status !== 202) throw new Error(`POST gave ${post.status}`);
  const location = post.headers.get('location')!;
  const url = new URL(location, base);
  url.searchParams.set('digest', digest ?? sha256(data));
  return fetch(url, { method: 'PUT', body: data, headers: { 'content-type': 'application/octet-stream' } });
}

/** An OCI image manifest, as JSON text, for `config` and layers already pushed. */
export function imageManifest(
  config: Buffer,
  layers: readonly { digest: string; size: number }[] = [],
  annotations?: Record<string, string>,
): string {
  return JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: {
      mediaType: 'application/vnd.oci.image.config.v1+json',
      digest: sha256(config),
      size: config.length,
    },
    layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...l })),
    ...(annotations ? { annotations } : {}),
  });
}
