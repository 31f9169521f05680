// A loop-mounted XFS file system in a temporary directory, for the tests and the benchmark of snapshots'
// clone path (XFS shares blocks between files with the FICLONE ioctl; ext4, where /tmp usually is, cannot).
// Needs root and mkfs.xfs (Debian: xfsprogs). Used by packages/*/test and bench/snapshot.mjs.
import { execFile, execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
// mkfs.xfs, mount and losetup live in sbin directories a non-login PATH may lack.
const env = { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` };

/** The first line of what a failed command said. */
function reason(err) {
  const text = String(err?.stderr || err?.message || err).trim();
  return text.split('\n')[0];
}

/**
 * Creates a sparse image of `sizeMiB` (default 512) in a temporary directory, makes an XFS file system on
 * it and mounts it with `mount -o loop`. Resolves with `{ dir, unmount, unmountSync }` (`dir`: the mount
 * point, empty; `unmount()`: unmounts, detaches the loop device and removes the image, whatever happened
 * before; `unmountSync()`: the same, synchronously, for exit handlers), or with `{ skipped: reason }`
 * when that cannot be done here (not root, no mkfs.xfs, mount refused) or SEGMEM_NO_XFS=1 asks not to.
 */
export async function mountXfs({ sizeMiB = 512 } = {}) {
  if (process.env.SEGMEM_NO_XFS === '1') return { skipped: 'SEGMEM_NO_XFS=1 is set' };
  if (typeof process.getuid === 'function' && process.getuid() !== 0)
    return { skipped: 'not running as root (mounting a loop device needs root)' };
  try {
    await run('mkfs.xfs', ['-V'], { env });
  } catch (err) {
    return { skipped: `mkfs.xfs is missing (apt-get install xfsprogs): ${reason(err)}` };
  }
  const base = await mkdtemp(join(tmpdir(), 'segmem-xfs-'));
  const image = join(base, 'xfs.img');
  const dir = join(base, 'mnt');
  let device = null;
  let mounted = false;
  // mount -o loop sets autoclear, so the device is usually gone once unmounted; detach it if not, but only
  // while it still holds this image (a concurrent test may have been given the same device number since).
  const ours = (out) => out.trim() === image;
  const unmount = async () => {
    if (mounted) {
      await run('umount', [dir], { env });
      mounted = false;
    }
    if (device) {
      const back = await run('losetup', ['-n', '-O', 'BACK-FILE', device], { env }).catch(() => null);
      if (back && ours(back.stdout)) await run('losetup', ['-d', device], { env }).catch(() => {});
      device = null;
    }
    await rm(base, { recursive: true, force: true });
  };
  const unmountSync = () => {
    if (mounted) execFileSync('umount', [dir], { env, stdio: 'ignore' });
    mounted = false;
    if (device) {
      try {
        const back = execFileSync('losetup', ['-n', '-O', 'BACK-FILE', device], { env, encoding: 'utf8' });
        if (ours(back)) execFileSync('losetup', ['-d', device], { env, stdio: 'ignore' });
      } catch {
        // detached already
      }
      device = null;
    }
    rmSync(base, { recursive: true, force: true });
  };
  try {
    const img = await open(image, 'wx');
    await img.truncate(sizeMiB * 1024 * 1024);
    await img.close();
    await run('mkfs.xfs', ['-q', '-f', image], { env });
    await mkdir(dir);
    await run('mount', ['-o', 'loop', image, dir], { env });
    mounted = true;
    device = (await run('findmnt', ['-n', '-o', 'SOURCE', dir], { env })).stdout.trim() || null;
    return { dir, unmount, unmountSync };
  } catch (err) {
    const why = reason(err);
    await unmount().catch(() => {});
    return { skipped: `could not make and mount an XFS image: ${why}` };
  }
}

/**
 * Runs `body(dir)` with an XFS file system mounted at `dir`, unmounted (and its loop device detached)
 * afterwards whatever happens. Where none can be mounted, an ava test `t` passes with the reason in its
 * log instead (the SKIPPED line says why).
 */
export async function withXfs(t, body) {
  const xfs = await mountXfs();
  if ('skipped' in xfs) {
    t.log(`SKIPPED (no XFS mount here): ${xfs.skipped}`);
    t.pass();
    return;
  }
  try {
    await body(xfs.dir);
  } finally {
    await xfs.unmount();
  }
}
