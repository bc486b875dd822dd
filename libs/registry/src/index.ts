export * from './blob.service';
export * from './repository.store';
export * from './upload.service';
