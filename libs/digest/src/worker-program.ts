import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * How to start a worker thread's program `<dir>/<name>.ts`: its compiled sibling when running from `dist/`; from
 * the TypeScript sources (the tests), that file transpiled by TypeScript itself and run as an eval'd worker.
 * Give the result to `new Worker(program.source, { eval: program.eval })`.
 */
export function workerProgram(dir: string, name: string): { source: string; eval: boolean } {
  const compiled = join(dir, `${name}.js`);
  if (existsSync(compiled)) return { source: compiled, eval: false };
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- a development dependency, needed only here
  const ts = require('typescript') as typeof import('typescript');
  const text = readFileSync(join(dir, `${name}.ts`), 'utf8');
  const { outputText } = ts.transpileModule(text, {
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022 },
  });
  return { source: outputText, eval: true };
}
