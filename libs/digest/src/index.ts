export * from './hashers';
