export * from './hashers';
export * from './hash-worker';
export * from './worker-program';
