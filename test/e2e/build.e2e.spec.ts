import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { appendFile, cp, mkdtemp, readFile, realpath, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const REPO = join(__dirname, '../..');

function run(file: string, args: string[], cwd: string): Promise<{ status: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(file, args, {
      cwd,
      env: { PATH: process.env.PATH ?? '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout!.on('data', (d: Buffer) => (output += d.toString('utf8')));
    child.stderr!.on('data', (d: Buffer) => (output += d.toString('utf8')));
    child.once('error', reject);
    child.once('close', (status) => resolve({ status, output }));
  });
}

/** `npm run build` (the build script with --always) in `root`, started now; resolves with its exit status. */
function startBuild(root: string): { done: Promise<number | null>; finished: () => boolean } {
  let finished = false;
  const done = run('node', ['bin/build-if-stale.mjs', '--always'], root).then((r) => {
    finished = true;
    return r.status;
  });
  return { done, finished: () => finished };
}

/** What a registry does as it starts, over and over until `until` holds: load every module of the build. */
async function startWhile(
  root: string,
  until: () => boolean,
): Promise<{ starts: number; failures: string[] }> {
  const failures: string[] = [];
  let starts = 0;
  while (!until()) {
    // The build step of `npm start` decides by the stamp whether there is a build to run.
    if (!existsSync(join(root, 'dist', '.build-sources.sha256'))) failures.push('no build stamp in dist/');
    const r = await run(join(root, 'bin', 'strata'), ['verify-config'], root);
    if (r.status !== 0) failures.push(r.output);
    starts++;
  }
  return { starts, failures };
}

/** The build writes where its script is: each test has a checkout of its own, sharing node_modules. */
describe('the build', () => {
  const roots: string[] = [];

  async function checkout(): Promise<string> {
    const root = await mkdtemp(join(tmpdir(), 'strata-build-'));
    roots.push(root);
    for (const p of [
      'apps',
      'libs',
      'bin',
      'migrations',
      'tsconfig.json',
      'package.json',
      'package-lock.json',
    ]) {
      await cp(join(REPO, p), join(root, p), { recursive: true });
    }
    await symlink(join(REPO, 'node_modules'), join(root, 'node_modules'));
    expect((await run('node', ['bin/build-if-stale.mjs', '--always'], root)).status).toBe(0);
    return root;
  }

  afterAll(async () => {
    for (const root of roots) await rm(root, { recursive: true, force: true });
  });

  it('lets a start during a build load the old build or the new one, whole, and then uses the new one', async () => {
    const root = await checkout();
    await appendFile(join(root, 'apps', 'registry', 'src', 'main.ts'), '\n// the new build\n');
    const build = startBuild(root);
    const { starts, failures } = await startWhile(root, build.finished);
    expect(await build.done).toBe(0);
    expect(failures).toEqual([]);
    expect(starts).toBeGreaterThan(0);
    expect(await readFile(join(root, 'dist', 'apps', 'registry', 'src', 'main.js'), 'utf8')).toContain(
      '// the new build',
    );
    expect((await run(join(root, 'bin', 'strata'), ['verify-config'], root)).status).toBe(0);
  });

  it('leaves the build in use as it was when a build fails', async () => {
    const root = await checkout();
    const before = await realpath(join(root, 'dist', 'apps', 'registry', 'src', 'main.js'));
    const stamp = await readFile(join(root, 'dist', '.build-sources.sha256'), 'utf8');
    await appendFile(join(root, 'libs', 'oci', 'src', 'index.ts'), "\nexport const broken: number = 'no';\n");
    const build = startBuild(root);
    const { failures } = await startWhile(root, build.finished);
    expect(await build.done).not.toBe(0);
    expect(failures).toEqual([]);
    expect(await realpath(join(root, 'dist', 'apps', 'registry', 'src', 'main.js'))).toBe(before);
    expect(await readFile(join(root, 'dist', '.build-sources.sha256'), 'utf8')).toBe(stamp);
    expect((await run(join(root, 'bin', 'strata'), ['verify-config'], root)).status).toBe(0);
  });
});
