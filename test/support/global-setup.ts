import { randomBytes } from 'node:crypto';
import { createTemplate, type ProvidedPostgres, providePostgres } from './postgres-provider';

declare global {
  var __strataPostgres: { provided: ProvidedPostgres; template: string } | undefined;
}

export default async function globalSetup(): Promise<void> {
  const provided = await providePostgres();
  const template = `strata_tpl_${randomBytes(4).toString('hex')}`;
  await createTemplate(provided.adminUrl, template);
  globalThis.__strataPostgres = { provided, template };
  process.env.STRATA_TEST_ADMIN_URL = provided.adminUrl;
  process.env.STRATA_TEST_TEMPLATE = template;
  process.env.STRATA_TEST_PROVIDER = provided.kind;
  process.stdout.write(`\nPostgreSQL for tests: ${provided.kind}\n`);
}
