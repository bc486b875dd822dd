import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FilesystemDriver } from '@strata/storage';
import { tempDirName } from '../../libs/storage/src/temp-owner';

/** A pid that was a process of this machine and is no more. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', '']);
  await new Promise((r) => child.once('exit', r));
  return child.pid!;
}

describe("the filesystem driver's leftovers of processes that died", () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'strata-leftovers-'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  /** A temp directory with a partial write in it, named as the process `pid` of this machine would name it. */
  async function tempDir(name: string, ageMs = 0): Promise<string> {
    const dir = join(root, 'tmp', name);
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'partial'), Buffer.alloc(1000));
    const at = new Date(Date.now() - ageMs);
    await utimes(dir, at, at);
    return name;
  }
  const asPid = (pid: number): string => tempDirName('00ff').replace(`.${process.pid}.`, `.${pid}.`);

  it('removes a dead process’s directory at once and keeps a live one’s, however old', async () => {
    const dead = await tempDir(asPid(await deadPid()));
    const sleeper = spawn('sleep', ['30']);
    try {
      // A live process's directory that it has not marked lately (it may be stopped): kept while under an hour.
      const live = await tempDir(asPid(sleeper.pid!), 30 * 60 * 1000);
      // Directories this process cannot judge (another host, another container, an older name): by age alone.
      const foreignFresh = await tempDir('0f0e0d0c-aaaa-bbbb-cccc-000000000000.4026531836.12.00aa');
      const foreignStale = await tempDir(
        '0f0e0d0c-aaaa-bbbb-cccc-000000000000.4026531836.13.00bb',
        2 * 3600 * 1000,
      );
      const oldName = await tempDir('0123456789abcdef', 2 * 3600 * 1000);

      const driver = new FilesystemDriver(root, { directIo: false });
      await driver.init();
      const left = await readdir(join(root, 'tmp'));
      expect(left).toEqual(expect.arrayContaining([live, foreignFresh]));
      for (const gone of [dead, foreignStale, oldName]) expect(left).not.toContain(gone);
      // The driver's own directory is there, and a second look removes nothing more.
      expect(left).toHaveLength(3);
      expect(await driver.removeLeftovers()).toBe(0);
    } finally {
      sleeper.kill();
    }
  });

  it('is found again by a later run once its process has died', async () => {
    const sleeper = spawn('sleep', ['30']);
    const name = await tempDir(asPid(sleeper.pid!));
    const driver = new FilesystemDriver(root, { directIo: false });
    await driver.init();
    expect(await readdir(join(root, 'tmp'))).toContain(name);
    sleeper.kill('SIGKILL');
    await new Promise((r) => sleeper.once('exit', r));
    expect(await driver.removeLeftovers()).toBe(1);
    expect(await readdir(join(root, 'tmp'))).not.toContain(name);
  });
});
