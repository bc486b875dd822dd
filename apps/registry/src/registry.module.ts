import { type DynamicModule, Global, Module, type OnApplicationShutdown } from '@nestjs/common';
import { ModuleRef } from '@nestjs/core';
import {
  BlobService,
  CatalogService,
  ManifestService,
  RepositoryStore,
  UploadService,
} from '@strata/registry';
import { PreparedStatements } from '@strata/db';
import type { Runtime } from './runtime';
import { CONFIG, DB, LOGGER, POOL, RUNTIME, STORAGE } from './tokens';

/** Hands the runtime (pool, storage, logger) to Nest and builds the framework-free domain services on it. */
@Global()
@Module({})
export class RegistryModule implements OnApplicationShutdown {
  constructor(private readonly moduleRef: ModuleRef) {}

  /** After the HTTP server has drained: requests in flight still hash on the upload service's worker. */
  async onApplicationShutdown(): Promise<void> {
    await this.moduleRef.get(UploadService).close();
  }

  static register(runtime: Runtime): DynamicModule {
    const prepared = new PreparedStatements(runtime.pool);
    return {
      module: RegistryModule,
      providers: [
        { provide: RUNTIME, useValue: runtime },
        { provide: CONFIG, useValue: runtime.config },
        { provide: DB, useValue: runtime.db },
        { provide: POOL, useValue: runtime.pool },
        { provide: STORAGE, useValue: runtime.storage },
        { provide: LOGGER, useValue: runtime.logger },
        { provide: RepositoryStore, useFactory: () => new RepositoryStore(runtime.db) },
        {
          provide: UploadService,
          inject: [RepositoryStore],
          useFactory: (repos: RepositoryStore) =>
            new UploadService(runtime.db, runtime.storage, repos, runtime.logger, prepared, {
              inlineMax: runtime.config.inlineBlobMax,
              deferChunkSync: runtime.config.deferChunkSync,
            }),
        },
        {
          provide: BlobService,
          inject: [RepositoryStore],
          useFactory: (repos: RepositoryStore) =>
            new BlobService(runtime.db, runtime.storage, repos, prepared),
        },
        {
          provide: ManifestService,
          inject: [RepositoryStore],
          useFactory: (repos: RepositoryStore) => new ManifestService(runtime.db, repos, prepared),
        },
        {
          provide: CatalogService,
          inject: [RepositoryStore],
          useFactory: (repos: RepositoryStore) => new CatalogService(runtime.db, repos),
        },
      ],
      exports: [
        RUNTIME,
        CONFIG,
        DB,
        POOL,
        STORAGE,
        LOGGER,
        RepositoryStore,
        UploadService,
        BlobService,
        ManifestService,
        CatalogService,
      ],
    };
  }
}
