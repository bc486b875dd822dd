import { dropDatabase } from './postgres-provider';

export default async function globalTeardown(): Promise<void> {
  const state = globalThis.__strataPostgres;
  if (!state) return;
  await dropDatabase(state.provided.adminUrl, state.template).catch(() => undefined);
  await state.provided.stop();
}
