export * from './hashers';
export * from './hash-worker';
