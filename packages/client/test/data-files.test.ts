/**
 * The data files' edges, against real `segmem-server` processes: a lost log is refused even when its
 * `wal-started` marker went with it (meta.json remembers, from the first durable record on, crash or clean
 * stop), and every file the server cannot read, open or write (an I/O error injected at the storage seam, a
 * directory where a file belongs, a file where a directory belongs, the vote file) stops it with one typed
 * line naming the file and the errno, exit code 1, no stack.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { connect } from '../src/index.js';
import {
  freePort,
  retryOnAddressInUse,
  runNode,
  segmemBin,
  serverBin,
  startServerProcess,
  tempDir,
  waitFor,
} from './helpers.js';

/** Starts a server on `data`, writes one object, and stops it cleanly. */
async function initialise(data: string): Promise<void> {
  const server = await retryOnAddressInUse(() => startServerProcess({ dataDir: data, fsync: 'always' }));
  try {
    const seg = await connect({ servers: [server.address] });
    await seg.create('kept', 8);
    await seg.update('kept', (h) => h.bytes.writeUInt32LE(42, 0));
    await seg.close();
  } finally {
    await server.stop();
  }
}

/** Runs segmem-server on `data` and expects it to refuse to start: resolves with its one stderr line. */
async function refusedStart(
  t: ExecutionContext,
  data: string,
  env: Record<string, string> = {},
  extra: string[] = [],
): Promise<string> {
  const run = runNode(serverBin, ['--id', 's1', '--listen', '127.0.0.1:0', '--data', data, ...extra], {
    env,
    timeoutMs: 20_000,
    onLine: (line, proc) => {
      if (/ ready on /.test(line)) proc.kill('SIGTERM'); // it started: the assertions below say so
    },
  });
  const { code, stdout, stderr } = await run.done;
  t.is(code, 1, `exit code (stdout: ${stdout}; stderr: ${stderr})`);
  const lines = stderr.trimEnd().split('\n');
  t.is(lines.length, 1, `one line, no stack: ${stderr}`);
  t.false(/^\s+at /m.test(stderr), 'no stack trace');
  t.true(lines[0]!.startsWith('segmem-server: '), lines[0]);
  return lines[0]!;
}

test('a log lost together with its wal-started marker is refused: meta.json remembers that it held records', async (t) => {
  const dir = tempDir('segmem-files-');
  const data = join(dir.path, 'data');
  try {
    await initialise(data);
    const meta = JSON.parse(readFileSync(join(data, 'meta.json'), 'utf8')) as { walStartedAt?: string };
    t.is(typeof meta.walStartedAt, 'string', 'the clean stop recorded the marker in meta.json');
    // What `rm -rf wal*` does.
    rmSync(join(data, 'wal'), { recursive: true });
    rmSync(join(data, 'wal-started'));
    const line = await refusedStart(t, data);
    t.regex(line, /write-ahead log is missing: .*wal holds no segment file/);
    t.regex(line, /\(UNAVAILABLE\)$/);
    t.true(existsSync(join(data, 'wal-started')), 'the marker is back, so the refusal holds on every start');
    t.is((await refusedStart(t, data)).includes('write-ahead log is missing'), true);
  } finally {
    dir.cleanup();
  }
});

test('a log lost with its marker after a crash (no clean stop ever) is refused too: meta.json records the marker at the first durable record', async (t) => {
  const dir = tempDir('segmem-files-');
  const data = join(dir.path, 'data');
  try {
    const server = await retryOnAddressInUse(() => startServerProcess({ dataDir: data, fsync: 'always' }));
    try {
      const seg = await connect({ servers: [server.address] });
      await seg.create('kept', 8);
      await seg.update('kept', (h) => h.bytes.writeUInt32LE(42, 0));
      await seg.close();
      // Recorded while the server runs, off the write path: waited for, not assumed.
      const meta = await waitFor(() => {
        const m = JSON.parse(readFileSync(join(data, 'meta.json'), 'utf8')) as { walStartedAt?: string };
        return m.walStartedAt !== undefined ? m : null;
      }, 'meta.json recording walStartedAt while the server runs');
      t.false(Number.isNaN(Date.parse(meta.walStartedAt!)), meta.walStartedAt);
    } finally {
      await server.kill(); // SIGKILL: no clean stop
    }
    rmSync(join(data, 'wal'), { recursive: true });
    rmSync(join(data, 'wal-started'));
    const line = await refusedStart(t, data);
    t.regex(line, /write-ahead log is missing: .*wal holds no segment file/);
    t.regex(line, /\(UNAVAILABLE\)$/);
  } finally {
    dir.cleanup();
  }
});

test('a fresh data directory still starts, and so does one whose server never wrote', async (t) => {
  const dir = tempDir('segmem-files-');
  const data = join(dir.path, 'data');
  try {
    for (let run = 0; run < 2; run++) {
      const server = await retryOnAddressInUse(() => startServerProcess({ dataDir: data, fsync: 'always' }));
      t.is(await server.stop(), 0, server.stderr());
    }
    await initialise(data);
    const server = await retryOnAddressInUse(() => startServerProcess({ dataDir: data, fsync: 'always' }));
    try {
      const seg = await connect({ servers: [server.address] });
      t.is(await seg.read('kept', (h) => h.bytes.readUInt32LE(0)), 42);
      await seg.close();
    } finally {
      t.is(await server.stop(), 0, server.stderr());
    }
  } finally {
    dir.cleanup();
  }
});

test('an I/O error reading meta.json at start is UNAVAILABLE naming the file and the errno, not a bad argument', async (t) => {
  const dir = tempDir('segmem-files-');
  const data = join(dir.path, 'data');
  try {
    await initialise(data);
    const line = await refusedStart(t, data, { SEGMEM_FAIL_AT: 'recovery.read-meta:1:1:EIO' });
    t.is(line, `segmem-server: cannot read ${join(data, 'meta.json')}: EIO (UNAVAILABLE)`);
  } finally {
    dir.cleanup();
  }
});

test('an I/O error writing meta.json of a fresh directory names the file and the errno', async (t) => {
  const dir = tempDir('segmem-files-');
  const data = join(dir.path, 'data');
  try {
    for (const [step, errno] of [
      ['meta.create', 'EIO'],
      ['meta.sync', 'ENOSPC'],
    ] as const) {
      const line = await refusedStart(t, data, { SEGMEM_FAIL_AT: `${step}:1:1:${errno}` });
      t.is(line, `segmem-server: cannot write ${join(data, 'meta.json')}: ${errno} (UNAVAILABLE)`);
      t.false(existsSync(join(data, 'meta.json')), 'nothing half-written is left as meta.json');
    }
  } finally {
    dir.cleanup();
  }
});

test('an I/O error reading a WAL segment at start names the file and the errno', async (t) => {
  const dir = tempDir('segmem-files-');
  const data = join(dir.path, 'data');
  try {
    await initialise(data);
    const line = await refusedStart(t, data, { SEGMEM_FAIL_AT: 'recovery.read-wal:1:1:EIO' });
    t.regex(line, /cannot read write-ahead log file .*\/wal\/0+1\.wal: EIO \(UNAVAILABLE\)$/);
  } finally {
    dir.cleanup();
  }
});

test('a file where wal/ or snap/ belongs, or a directory where LOCK belongs: one line naming it', async (t) => {
  const dir = tempDir('segmem-files-');
  const data = join(dir.path, 'data');
  try {
    await initialise(data);
    for (const sub of ['wal', 'snap']) {
      const saved = join(dir.path, `${sub}.saved`);
      rmSync(saved, { recursive: true, force: true });
      // Put a file in the directory's place (keeping the directory aside), then put it back.
      renameSync(join(data, sub), saved);
      writeFileSync(join(data, sub), 'not a directory');
      const line = await refusedStart(t, data);
      t.is(
        line,
        `segmem-server: ${join(data, sub)} is not a directory (EEXIST): a file is in its place (UNAVAILABLE)`,
      );
      rmSync(join(data, sub));
      renameSync(saved, join(data, sub));
    }
    mkdirSync(join(data, 'LOCK'));
    const line = await refusedStart(t, data);
    t.is(line, `segmem-server: cannot read the lock file ${join(data, 'LOCK')}: EISDIR (UNAVAILABLE)`);
  } finally {
    dir.cleanup();
  }
});

test('a vote file that cannot be written is one typed line naming it: at the first start, and at a term change', async (t) => {
  const dir = tempDir('segmem-files-');
  try {
    const secret = join(dir.path, 'secret');
    const made = await runNode(segmemBin, ['secret', 'new', secret]).done;
    t.is(made.code, 0, made.stderr);
    // A member of a group of two: its first start writes the vote file.
    const member = ['--peers', 's1=127.0.0.1:1,s2=127.0.0.1:2', '--cluster-secret-file', secret];
    for (const [step, errno] of [
      ['vote.create', 'EIO'],
      ['vote.rename', 'EACCES'],
    ] as const) {
      const data = join(dir.path, `first-${step}`);
      const line = await refusedStart(t, data, { SEGMEM_FAIL_AT: `${step}:1:1:${errno}` }, member);
      t.is(line, `segmem-server: cannot write ${join(data, 'vote')}: ${errno} (UNAVAILABLE)`);
    }

    // Later: the first election changes the term, and s1 cannot record it.
    await retryOnAddressInUse(async () => {
      const ports = [await freePort(), await freePort()];
      const peers = `s1=127.0.0.1:${ports[0]},s2=127.0.0.1:${ports[1]}`;
      const start = (id: string, port: number, env?: Record<string, string>) =>
        startServerProcess({
          id,
          dataDir: join(dir.path, `later-${id}`),
          listen: `127.0.0.1:${port}`,
          fsync: 'always',
          extra: ['--peers', peers, '--cluster-secret-file', secret],
          ...(env ? { env } : {}),
        });
      const s1 = await start('s1', ports[0]!, { SEGMEM_FAIL_AT: 'vote.create:2:1:EIO' });
      try {
        const s2 = await start('s2', ports[1]!);
        try {
          const vote = join(dir.path, 'later-s1', 'vote');
          await waitFor(
            () => s1.stderr().includes('raft loop failed'),
            's1 failing to record a term change',
            20_000,
          );
          t.regex(
            s1.stderr(),
            new RegExp(`raft loop failed: cannot write ${vote.replace(/[.]/g, '\\.')}: EIO\n`),
          );
          t.false(/^\s+at /m.test(s1.stderr()), `no stack trace: ${s1.stderr()}`);
        } finally {
          await s2.stop();
        }
      } finally {
        await s1.kill();
      }
    });
  } finally {
    dir.cleanup();
  }
});
