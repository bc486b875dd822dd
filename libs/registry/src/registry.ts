import type { Logger } from 'pino';
import type { PreparedStatements } from '@strata/db';
import type { BlobStorage } from '@strata/storage';
import { BlobService } from './blob.service';
import { BrowseService } from './browse.service';
import { CatalogService } from './catalog.service';
import { ManifestService } from './manifests/manifest.service';
import { BlobStore } from './stores/blob.store';
import { BrowseStore } from './stores/browse.store';
import { ManifestStore } from './stores/manifest.store';
import { RepositoryStore } from './stores/repository.store';
import { TagStore } from './stores/tag.store';
import { UploadStore } from './stores/upload.store';
import { BlobCommits } from './uploads/blob-commits';
import { UploadHashing } from './uploads/upload-hashing';
import { type UploadOptions, UploadService } from './uploads/upload.service';

export interface RegistryDependencies {
  readonly statements: PreparedStatements;
  readonly storage: BlobStorage;
  readonly logger: Logger;
  readonly uploads?: UploadOptions;
}

/** The domain, wired: the services the HTTP layer calls, over the stores that alone hold SQL. */
export interface Registry {
  readonly repositories: RepositoryStore;
  readonly uploads: UploadService;
  readonly blobs: BlobService;
  readonly manifests: ManifestService;
  readonly catalog: CatalogService;
  readonly browse: BrowseService;
  /** Stops background work (hashing catch-ups) once it finishes; nothing is used after. */
  close(): Promise<void>;
}

export function createRegistry(d: RegistryDependencies): Registry {
  const options = d.uploads ?? { inlineMax: 0 };
  const repositories = new RepositoryStore(d.statements);
  const uploadStore = new UploadStore(d.statements);
  const blobStore = new BlobStore(d.statements);
  const manifestStore = new ManifestStore(d.statements);
  const tagStore = new TagStore(d.statements);
  const hashing = new UploadHashing(uploadStore, d.storage, d.logger);
  const commits = new BlobCommits(uploadStore, blobStore, d.storage, hashing, d.logger, options.inlineMax);
  const uploads = new UploadService(
    uploadStore,
    repositories,
    d.storage,
    hashing,
    commits,
    d.logger,
    options,
  );
  const blobs = new BlobService(blobStore, d.storage, repositories);
  const manifests = new ManifestService(manifestStore, tagStore, repositories);
  const catalog = new CatalogService(repositories, tagStore, manifestStore);
  return {
    repositories,
    uploads,
    blobs,
    manifests,
    catalog,
    browse: new BrowseService(new BrowseStore(d.statements), repositories, manifests, blobs, catalog),
    close: () => uploads.close(),
  };
}
