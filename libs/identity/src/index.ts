export * from './accounts';
export * from './directory';
export * from './failures';
export * from './identity';
export * from './identity.store';
export * from './passwords';
export * from './scope';
export * from './tokens';
