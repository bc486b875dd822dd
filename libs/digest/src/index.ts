export * from './hashers';
export * from './worker-sha256';
