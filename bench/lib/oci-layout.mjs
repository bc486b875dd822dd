// Builds an OCI image layout directory (oci-layout, index.json, blobs/sha256/…) for the skopeo workload.
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sha256, writeRandomFile } from './util.mjs';

const LAYER_TYPE = 'application/vnd.oci.image.layer.v1.tar';

/** `layers` random, uncompressed layers of `layerSize` bytes each. Returns { dir, totalBytes, ref }. */
export async function buildOciLayout(dir, { layers, layerSize, tag = 'latest' }) {
  const blobs = join(dir, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  const putJson = (obj) => {
    const buf = Buffer.from(JSON.stringify(obj));
    const digest = sha256(buf);
    writeFileSync(join(blobs, digest.slice('sha256:'.length)), buf);
    return { digest, size: buf.length };
  };

  const layerDescs = [];
  for (let i = 0; i < layers; i++) {
    const tmp = join(blobs, `.layer-${i}`);
    const digest = await writeRandomFile(tmp, layerSize);
    renameSync(tmp, join(blobs, digest.slice('sha256:'.length)));
    layerDescs.push({ mediaType: LAYER_TYPE, digest, size: layerSize });
  }
  const config = putJson({
    architecture: 'amd64',
    os: 'linux',
    config: {},
    // Uncompressed layers: the diff ID is the layer digest itself.
    rootfs: { type: 'layers', diff_ids: layerDescs.map((l) => l.digest) },
    history: layerDescs.map((_, i) => ({ created_by: `strata bench layer ${i}` })),
  });
  const manifest = putJson({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: layerDescs,
  });
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          ...manifest,
          annotations: { 'org.opencontainers.image.ref.name': tag },
        },
      ],
    }),
  );
  return {
    dir,
    totalBytes: layers * layerSize + config.size + manifest.size,
    manifestDigest: manifest.digest,
  };
}
