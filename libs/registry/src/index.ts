export * from './blob.service';
export * from './catalog.service';
export * from './manifest.service';
export * from './repository.store';
export * from './upload.service';
