/**
 * Page-file snapshots: every file written loads back to exactly the state that was frozen (the same
 * snapshot() bytes, so the same digest). On the default file system (ext4 here) by the copy path, on a
 * loop-mounted XFS by the clone path, which writes only the pages changed since the previous snapshot and
 * leaves that one as it was. A refused clone falls back to the copy path and says why; any other failure
 * fails the snapshot and leaves nothing behind. Files of the first format (SGMSNAP1) still load.
 *
 * Serial: the fault-injection tests set faults for the whole process.
 */
import { randomBytes } from 'node:crypto';
import { constants, promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SegmemError } from '@segmem/protocol';
import test, { type ExecutionContext } from 'ava';
import type { Command } from '../src/core/commands.js';
import { type FrozenSnapshot, StateMachine } from '../src/core/state-machine.js';
import { openLocalLog } from '../src/log/local-log.js';
import { setFaults } from '../src/storage/faults.js';
import { imageOffsetFor, type SnapshotWrite } from '../src/storage/page-file.js';
import { loadSnapshotFile, SnapshotDir } from '../src/storage/snapshots.js';
import { PAGE, workload } from './fixtures/workload.js';
import { withXfs } from './fixtures/xfs.js';

const fixtures = resolve(dirname(fileURLToPath(import.meta.url)), '../../test/fixtures');
/** Codes a file system answers a clone with when it cannot share blocks. */
const CLONE_REFUSALS = ['ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EINVAL', 'ENOSYS'];

async function tempDir(t: ExecutionContext, under = tmpdir()): Promise<string> {
  const dir = await fsp.mkdtemp(join(under, 'segmem-page-file-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Whether files in `dir` can be reflinked. */
async function canClone(dir: string): Promise<boolean> {
  const a = join(dir, 'probe-a');
  await fsp.writeFile(a, 'x');
  try {
    await fsp.copyFile(a, join(dir, 'probe-b'), constants.COPYFILE_FICLONE_FORCE);
    return true;
  } catch {
    return false;
  } finally {
    await fsp.rm(a, { force: true });
    await fsp.rm(join(dir, 'probe-b'), { force: true });
  }
}

/** Writes `view` as snapshot `index` of `snaps`, applying `during` while it is written; releases the view. */
async function write(
  snaps: SnapshotDir,
  index: number,
  view: FrozenSnapshot,
  during = () => {},
): Promise<SnapshotWrite> {
  try {
    const writing = snaps.write({ index, term: 0, members: [] }, view);
    during();
    return await writing;
  } finally {
    view.release();
  }
}

/**
 * Snapshots of a random workload into `dir`, commands applying while each is written, each loaded back
 * and compared with the state at its freeze.
 */
async function randomSnapshots(
  t: ExecutionContext,
  dir: string,
  seed: number,
  rounds: number,
): Promise<SnapshotWrite[]> {
  const { sm, step } = workload(seed);
  const snaps = new SnapshotDir(dir);
  const out: SnapshotWrite[] = [];
  for (let k = 1; k <= rounds; k++) {
    for (let i = 0; i < 60; i++) step();
    const expected = sm.snapshot();
    const written = await write(snaps, k, sm.freeze(), () => {
      for (let i = 0; i < 10; i++) step();
    });
    const loaded = await loadSnapshotFile(written.file);
    t.true(loaded.state.snapshot().equals(expected), `seed ${seed}, snapshot ${k}: not the state frozen`);
    t.is(loaded.meta.index, k);
    out.push(written);
  }
  return out;
}

test.serial(
  'random workloads: every page file loads back to the state at its freeze (default file system: the copy path)',
  async (t) => {
    const dir = await tempDir(t);
    const clones = await canClone(dir);
    t.log(
      `${dir}: ${clones ? 'reflinks work here (clone path expected)' : 'no reflinks (copy path expected)'}`,
    );
    for (let seed = 1; seed <= 12; seed++) {
      const sub = join(dir, `seed${seed}`);
      await fsp.mkdir(sub);
      const writes = await randomSnapshots(t, sub, seed, 6);
      t.like(writes[0], { path: 'copy', cloneError: undefined }, 'no previous page file: copy');
      for (const w of writes.slice(1)) {
        if (clones) t.is(w.path, 'clone');
        else {
          t.is(w.path, 'copy');
          t.true(CLONE_REFUSALS.includes(w.cloneError!), `clone refused with ${w.cloneError}`);
        }
      }
    }
  },
);

/** A state machine driven by hand: a session, objects created, written, deleted. */
function handDriven(segmentPages: number) {
  const sm = new StateMachine({ pageBytes: PAGE, segmentBytes: segmentPages * PAGE });
  let index = 0;
  let seq = 0;
  const apply = (cmd: Command) => sm.apply(++index, cmd);
  apply({ op: 'open', timeoutMs: 60_000, clientName: 'test' });
  const s = () => ({ sessionId: 1, seq: ++seq });
  return {
    sm,
    create: (name: string, pages: number) =>
      apply({ op: 'create', ...s(), name, size: pages * PAGE, ifNotExists: false }),
    remove: (name: string) => apply({ op: 'delete', ...s(), name }),
    /** Writes `data` at `offset` of `name`. */
    write: (name: string, offset: number, data: Buffer) => {
      const o = apply({ op: 'acquire', ...s(), name, mode: 'write' });
      const token = (o.result as { value: { granted: { token: number } } }).value.granted.token;
      apply({ op: 'release', ...s(), name, mode: 'write', token, ranges: [[offset, data.length]], data });
    },
  };
}

/** In a new directory under `under`: object "a" of four pages holding `fill`, and a first snapshot of it. */
async function firstSnapshot(t: ExecutionContext, under: string | undefined, fill: Buffer) {
  const dir = await tempDir(t, under);
  const h = handDriven(64);
  h.create('a', 4);
  h.write('a', 0, fill);
  const snaps = new SnapshotDir(dir);
  await write(snaps, 1, h.sm.freeze());
  return { dir, h, snaps };
}

test.serial(
  'XFS: the clone path writes only the changed pages, shares the rest, and leaves the previous file as it was',
  async (t) => {
    await withXfs(t, async (mount) => {
      const dir = await tempDir(t, mount);
      const PAGES = 1024; // 4 MiB objects
      const h = handDriven(8 * PAGES);
      for (const name of ['o1', 'o2', 'o3', 'o4']) {
        h.create(name, PAGES);
        h.write(name, 0, randomBytes(PAGES * PAGE));
      }
      const snaps = new SnapshotDir(dir);
      const expected1 = h.sm.snapshot();
      const first = await write(snaps, 1, h.sm.freeze());
      t.like(first, { path: 'copy', pages: 4 * PAGES, pageBytes: 4 * PAGES * PAGE });

      // Five pages change: three of o2, part of one of o3, one of a new object; o4 goes, o6 is never written.
      for (const p of [0, 5, PAGES - 1]) h.write('o2', p * PAGE, randomBytes(PAGE));
      h.write('o3', 7 * PAGE + 100, Buffer.from('ten bytes!'));
      h.remove('o4');
      h.create('o5', 2);
      h.write('o5', PAGE, randomBytes(PAGE));
      h.create('o6', 3);
      const expected2 = h.sm.snapshot();
      const free = async () => {
        const s = await fsp.statfs(mount);
        return s.bfree * s.bsize;
      };
      const freeBefore = await free();
      const second = await write(snaps, 2, h.sm.freeze());
      const used = freeBefore - (await free());
      t.like(second, { path: 'clone', cloneError: undefined, pages: 5, pageBytes: 5 * PAGE });
      t.true(
        second.bytes - second.pageBytes < 128 * 1024,
        `metadata of ${second.bytes - second.pageBytes} bytes`,
      );
      t.true(used < 2 * 1024 * 1024, `the clone of a 16 MiB file took ${used} bytes of the file system`);
      t.log(
        `copy: ${first.pages} pages in ${first.ms.toFixed(0)} ms; clone: ${second.pages} pages in ${second.ms.toFixed(0)} ms; ${used} bytes used`,
      );

      t.true((await loadSnapshotFile(second.file)).state.snapshot().equals(expected2));
      t.true(
        (await loadSnapshotFile(first.file)).state.snapshot().equals(expected1),
        'the source is unchanged',
      );
    });
  },
);

test.serial(
  'XFS: random workloads, every snapshot after the first a clone, each loads back to the state at its freeze',
  async (t) => {
    await withXfs(t, async (mount) => {
      for (let seed = 1; seed <= 12; seed++) {
        const dir = await tempDir(t, mount);
        const writes = await randomSnapshots(t, dir, seed, 6);
        t.is(writes[0]!.path, 'copy');
        for (const w of writes.slice(1)) t.like(w, { path: 'clone', cloneError: undefined });
      }
    });
  },
);

test.serial(
  "XFS: a clone keeps a deleted object's bytes where a new object's unwritten pages are, and loading never reads them",
  async (t) => {
    await withXfs(t, async (mount) => {
      const { h, snaps } = await firstSnapshot(t, mount, Buffer.alloc(4 * PAGE, 0xaa));
      h.remove('a');
      h.create('b', 4); // first fit: a's pages
      t.is(h.sm.stat('b')!.address, 0);
      h.write('b', 2 * PAGE, Buffer.alloc(PAGE, 0xbb));
      const expected = h.sm.snapshot();
      const w = await write(snaps, 2, h.sm.freeze());
      t.like(w, { path: 'clone', pages: 1 });
      const file = await fsp.readFile(w.file);
      const image = imageOffsetFor(PAGE);
      t.is(file[image], 0xaa, "the file still holds a's bytes in b's page 0");
      t.is(file[image + 2 * PAGE], 0xbb);
      const loaded = await loadSnapshotFile(w.file);
      t.true(loaded.state.snapshot().equals(expected));
      const b = loaded.state.objectNamed('b')!.data!;
      t.true(b.subarray(0, 2 * PAGE).equals(Buffer.alloc(2 * PAGE)), "b's unwritten pages are zero");
    });
  },
);

test.serial(
  'XFS: a clone refused (EXDEV, injected) falls back to the copy path and reports why',
  async (t) => {
    await withXfs(t, async (mount) => {
      const { h, snaps } = await firstSnapshot(t, mount, randomBytes(4 * PAGE));
      h.write('a', PAGE, randomBytes(10));
      setFaults([{ step: 'snapshot.clone', at: 1, action: 'fail', count: 1, errno: 'EXDEV' }]);
      let w: SnapshotWrite;
      try {
        w = await write(snaps, 2, h.sm.freeze());
      } finally {
        setFaults(null);
      }
      t.like(w, { path: 'copy', cloneError: 'EXDEV', pages: 4 });
      h.write('a', 3 * PAGE, randomBytes(10));
      const expected = h.sm.snapshot();
      const again = await write(snaps, 3, h.sm.freeze());
      t.like(again, { path: 'clone', pages: 1 });
      t.true((await loadSnapshotFile(again.file)).state.snapshot().equals(expected));
    });
  },
);

test.serial(
  'a clone failing otherwise (EIO, injected) fails the snapshot and leaves no temporary file; the next one succeeds',
  async (t) => {
    const dir = await tempDir(t);
    const h = handDriven(64);
    h.create('a', 2);
    h.write('a', 0, randomBytes(PAGE));
    const snaps = new SnapshotDir(dir);
    await write(snaps, 1, h.sm.freeze());
    h.write('a', PAGE, randomBytes(PAGE));
    setFaults([{ step: 'snapshot.clone', at: 1, action: 'fail', count: 1, errno: 'EIO' }]);
    try {
      const err = await t.throwsAsync(write(snaps, 2, h.sm.freeze()));
      t.is((err as NodeJS.ErrnoException).code, 'EIO');
    } finally {
      setFaults(null);
    }
    t.deepEqual(await fsp.readdir(dir), await snaps.list(), 'no temporary file left');
    const expected = h.sm.snapshot();
    const w = await write(snaps, 2, h.sm.freeze());
    t.true((await loadSnapshotFile(w.file)).state.snapshot().equals(expected));
  },
);

test.serial(
  'a data directory written before page files (SGMSNAP1) still opens; its next snapshot is a page file',
  async (t) => {
    const dir = await tempDir(t);
    await fsp.cp(join(fixtures, 'sgmsnap1-datadir'), dir, { recursive: true });
    const snapFile = join(dir, 'snap', '00000000000000000000-00000000000000000012.snap');
    const legacy = await loadSnapshotFile(snapFile);
    t.like(legacy, { meta: { index: 12, term: 0, members: [] }, pages: null });
    // (Its sessions come back with an empty resume secret, which they did not have: that changes this
    // digest and the two below from the ones the writing code computed, fd7140d0b6521921 and
    // 8f5da3b95066a4cf, and nothing else; so does the snapshot format number, 3 since queued deletes, whose
    // digests were 8aa6c42fcc6e2f61 and e72985bfc5f067e1 under format 2, and 4 since users (an empty users
    // list added), 5d668b6c91140f38 and 232191c0b71932e2 under format 3; 5 since groups (group 0 over the
    // whole segment added), 75ab558210a106bf and d71a77838d149065 under format 4; and 6 since slot tables
    // (group 0 owning every slot added), 7dd1a165cced4f9c and 062415567be0a1cf under format 5; and 7 since
    // slot moves (no move added), ff8aff02aac21634 and 29b12405adc81d16 under format 6.)
    t.is(legacy.state.digest(), '3fbae9ca59dfc184', 'the snapshot alone');

    const options = {
      dir,
      walDir: join(dir, 'wal'),
      fsync: 'always' as const,
      pageBytes: PAGE,
      segmentBytes: 64 * PAGE,
      snapshotEveryEntries: 0,
      snapshotIntervalMs: 0,
    };
    const opened = await openLocalLog(options);
    t.like(opened.report, { snapshot: { index: 12 }, wal: { records: 2 } });
    let log = opened.create(() => {});
    t.is(log.stateMachine.digest(), 'fb51726719872edc', 'the snapshot and the WAL after it');
    const written = await log.snapshot();
    t.like(written, { path: 'copy', cloneError: undefined });
    await log.close();
    t.is((await fsp.readFile(written!.file)).toString('latin1', 0, 8), 'SGMSNAP2');

    log = (await openLocalLog(options)).create(() => {});
    t.is(log.stateMachine.digest(), 'fb51726719872edc');
    await log.close();
  },
);

test.serial('a damaged SGMSNAP1 file is refused as before', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'legacy.snap');
  const bytes = await fsp.readFile(
    join(fixtures, 'sgmsnap1-datadir', 'snap', '00000000000000000000-00000000000000000012.snap'),
  );
  bytes[100]! ^= 1;
  await fsp.writeFile(file, bytes);
  const err = await t.throwsAsync(loadSnapshotFile(file));
  t.true(SegmemError.is(err, 'UNAVAILABLE'));
  t.is((err as SegmemError).details?.reason, 'SNAPSHOT_CORRUPT');
  t.regex(err!.message, /legacy\.snap is damaged: checksum mismatch/);
});
