/**
 * Users and per-prefix ACLs against real `segmem-server` processes over real sockets: logins (and the same
 * refusal for a wrong name and a wrong password), rights checked at every request and changing nothing when
 * refused, LIST filtered, admin-only operations, snapshot exports private to their session, and users that
 * survive a restart and a change of leader.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import test, { type ExecutionContext } from 'ava';
import { connect, type Segment } from '../src/index.js';
import {
  RawConnection,
  runNode,
  segmemBin,
  startServerProcess,
  TestCluster,
  tempDir,
  untilItWorks,
  waitFor,
} from './helpers.js';

type Run = { code: number | null; stdout: string; stderr: string };

/**
 * Runs segmem with a generous --timeout: a login costs a scrypt on the server, which on a loaded machine
 * can outlast the default 2 s a command gives itself to reach the leader.
 */
function segmem(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return runNode(segmemBin, [...args, '--timeout', '20000'], {
    env: { SEGMEM_SERVERS: '', SEGMEM_TOKEN: '', SEGMEM_USER: '', SEGMEM_PASSWORD: '', ...env },
    timeoutMs: 60_000,
  }).done;
}

/** Runs segmem with `input` on its standard input (a pipe). */
function segmemWithInput(args: string[], input: string, env: Record<string, string>): Promise<Run> {
  return new Promise((resolveRun, reject) => {
    const proc = spawn(process.execPath, [segmemBin, ...args, '--timeout', '20000'], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, SEGMEM_SERVERS: '', SEGMEM_USER: '', SEGMEM_PASSWORD: '', ...env },
    });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`segmem ${args.join(' ')} did not finish within 60 s: ${stderr}`));
    }, 60_000);
    proc.once('close', (code) => {
      clearTimeout(timer);
      resolveRun({ code, stdout, stderr });
    });
    proc.stdin.end(input);
  });
}

async function ok(t: ExecutionContext, run: Promise<Run>): Promise<string> {
  const r = await run;
  t.is(r.code, 0, r.stderr);
  return r.stdout;
}

async function refused(t: ExecutionContext, work: Promise<unknown>, right: string, name: string | null) {
  const err = await t.throwsAsync(work, { instanceOf: SegmemError });
  t.is(err?.code, 'UNAUTHORIZED', err?.message);
  t.like(err?.details, { reason: 'FORBIDDEN', right, name });
}

/** One server (with a token) and password files; `body` gets the address and a way to run segmem as admin. */
async function withTokenServer(
  body: (s: {
    address: string;
    dir: string;
    asAdmin: (...args: string[]) => Promise<Run>;
    passwordFile: (name: string, password: string) => string;
  }) => Promise<void>,
): Promise<void> {
  const dir = tempDir();
  const config = join(dir.path, 'segmem.json');
  writeFileSync(config, JSON.stringify({ token: 'tok3n' }));
  const server = await startServerProcess({
    dataDir: join(dir.path, 'd'),
    fsync: 'none',
    extra: ['--config', config],
  });
  try {
    await body({
      address: server.address,
      dir: dir.path,
      asAdmin: (...args) => segmem([...args, '--servers', server.address], { SEGMEM_TOKEN: 'tok3n' }),
      passwordFile: (name, password) => {
        const file = join(dir.path, `${name}.pw`);
        writeFileSync(file, `${password}\n`, { mode: 0o600 });
        return file;
      },
    });
  } finally {
    await server.stop();
    dir.cleanup();
  }
}

test('a user without the write right cannot create, write or append; refused requests change nothing and the session goes on', async (t) => {
  await withTokenServer(async ({ address, asAdmin, passwordFile }) => {
    await ok(t, asAdmin('user', 'add', 'reader', '--new-password-file', passwordFile('reader', 'r-pass')));
    await ok(t, asAdmin('acl', 'set', 'reader', 'a/', 'read'));
    const admin = await connect({ servers: [address], token: 'tok3n' });
    const reader = await connect({ servers: [address], user: 'reader', password: 'r-pass' });
    try {
      await admin.create('a/x', 8);
      await admin.create('b/x', 8);
      await admin.update('a/x', (h) => h.view.setUint32(0, 7));

      await refused(t, reader.create('a/new', 8), 'write', 'a/new');
      await refused(t, reader.acquireWrite('a/x'), 'write', 'a/x');
      await refused(
        t,
        reader.update('a/x', (h) => h.view.setUint32(0, 99)),
        'write',
        'a/x',
      );
      await refused(t, reader.delete('a/x'), 'write', 'a/x');
      await refused(t, reader.log('a/log').append('no'), 'write', 'a/log');
      await refused(t, reader.acquireRead('b/x'), 'read', 'b/x');
      await refused(t, reader.stat('b/x'), 'read', 'b/x');

      // The session is still usable, with the rights it has.
      t.is(await reader.read('a/x', (h) => h.view.getUint32(0)), 7);
      t.deepEqual(
        (await reader.list()).map((o) => o.name),
        ['a/x'],
        'list shows only names the user may read',
      );
      t.deepEqual((await admin.list()).map((o) => o.name).sort(), ['a/x', 'b/x']);
      // Nothing changed: the admin reads the value and version as they were; no object or log appeared.
      const info = await admin.stat('a/x');
      t.is(await admin.read('a/x', (h) => h.view.getUint32(0)), 7);
      t.is(info.version, 2);
      await t.throwsAsync(admin.stat('a/new'), { message: /no object/ });

      // A rule changed applies to the open session at once.
      await ok(t, asAdmin('acl', 'set', 'reader', 'a/', 'write'));
      await reader.update('a/x', (h) => h.view.setUint32(0, 8));
      t.is(await admin.read('a/x', (h) => h.view.getUint32(0)), 8);
      await ok(t, asAdmin('acl', 'rm', 'reader', 'a/'));
      await refused(t, reader.acquireRead('a/x'), 'read', 'a/x');
      t.deepEqual(await reader.list(), []);
    } finally {
      await reader.close();
      await admin.close();
    }
  });
});

test('without the admin right a user cannot snapshot, change membership or manage users; the token holder can', async (t) => {
  await withTokenServer(async ({ address, dir, asAdmin, passwordFile }) => {
    await ok(t, asAdmin('user', 'add', 'writer', '--new-password-file', passwordFile('writer', 'w-pass')));
    await ok(t, asAdmin('acl', 'set', 'writer', '', 'write'));
    const asWriter = (...args: string[]) =>
      segmem([...args, '--servers', address, '--user', 'writer', '--password-file', join(dir, 'writer.pw')]);
    const forbidden = async (args: string[]) => {
      const r = await asWriter(...args);
      t.is(r.code, 1, r.stdout);
      t.regex(
        r.stderr,
        /^segmem: user writer may not do this: it needs the admin right on every name.*\(UNAUTHORIZED\)\n$/,
      );
    };
    await forbidden(['snapshot', '--out', join(dir, 'snap.segmem')]);
    await forbidden(['cluster', 'add', 's9', '127.0.0.1:1']);
    await forbidden(['cluster', 'remove', 's1']);
    await forbidden(['user', 'add', 'eve', '--new-password-file', join(dir, 'writer.pw')]);
    await forbidden(['user', 'ls']);
    await forbidden(['acl', 'set', 'writer', '', 'admin']);
    // What a writer may do works: create, put, ls, the membership list every client reads, status (its
    // page-reader login checks the password too).
    await ok(t, asWriter('create', 'w/x', '4'));
    t.regex(await ok(t, asWriter('ls')), /w\/x/);
    t.regex(await ok(t, asWriter('cluster', 'list')), /s1/);
    t.regex(await ok(t, asWriter('status')), /leader/);
    // A new user's password from standard input (its first line); an empty one is refused.
    await ok(
      t,
      segmemWithInput(['user', 'add', 'piped', '--servers', address], 'from-stdin\nignored\n', {
        SEGMEM_TOKEN: 'tok3n',
      }),
    );
    const empty = await segmemWithInput(['user', 'add', 'nopw', '--servers', address], '\n', {
      SEGMEM_TOKEN: 'tok3n',
    });
    t.is(empty.code, 1);
    t.regex(empty.stderr, /password must be 1\.\.1024 bytes.*\(INVALID_ARGUMENT\)/);
    const piped = await connect({ servers: [address], user: 'piped', password: 'from-stdin' });
    await refused(t, piped.stat('w/x'), 'read', 'w/x');
    await piped.close();
    await ok(t, asAdmin('user', 'rm', 'piped'));
    // Users and rules as the admin sees them; never a hash.
    const listed = JSON.parse(await ok(t, asAdmin('user', 'ls', '--json')));
    t.false(JSON.stringify(listed).includes('salt'), 'no password hash is listed');
    t.deepEqual(listed.users, [{ name: 'writer', rules: [['', 'write']] }]);
    t.regex(await ok(t, asAdmin('acl', 'ls')), /writer +"" +write/);
    // The token holder makes a first admin user, which can then do what the writer could not.
    await ok(
      t,
      asAdmin('user', 'add', 'root', '--admin', '--new-password-file', passwordFile('root', 'root-pass')),
    );
    const asRoot = (...args: string[]) =>
      segmem([...args, '--servers', address, '--user', 'root', '--password-file', join(dir, 'root.pw')]);
    await ok(t, asRoot('snapshot', '--out', join(dir, 'snap.segmem')));
    await ok(t, asRoot('acl', 'set', 'writer', 'w/', 'admin'));
    t.regex(await ok(t, asRoot('acl', 'ls', 'writer')), /writer +"w\/" +admin/);
    await ok(t, asRoot('user', 'rm', 'writer'));
    const gone = await asWriter('ls');
    t.is(gone.code, 1);
    t.regex(gone.stderr, /bad user name or password \(UNAUTHORIZED\)/);
  });
});

test('a snapshot export is readable only by its own session or an admin', async (t) => {
  await withTokenServer(async ({ address, asAdmin, passwordFile }) => {
    await ok(t, asAdmin('user', 'add', 'u1', '--admin', '--new-password-file', passwordFile('u1', 'p1')));
    await ok(t, asAdmin('user', 'add', 'u2', '--new-password-file', passwordFile('u2', 'p2')));
    await ok(t, asAdmin('acl', 'set', 'u2', '', 'write'));
    const maker = await RawConnection.open(address);
    const other = await RawConnection.open(address);
    const tokenHolder = await RawConnection.open(address);
    try {
      await maker.hello({ user: 'u1', password: 'p1' });
      await other.hello({ user: 'u2', password: 'p2' });
      await tokenHolder.hello({ token: 'tok3n' });
      const snap = await maker.call<'SNAPSHOT'>({ type: 'SNAPSHOT' });
      const read = { type: 'SNAPSHOT_READ' as const, id: snap.id, offset: 0, length: 64 };
      t.is((await maker.call<'SNAPSHOT_READ'>(read)).payload.length, Math.min(64, snap.bytes));
      const err = await t.throwsAsync(other.call<'SNAPSHOT_READ'>(read), { instanceOf: SegmemError });
      t.is(err?.code, 'UNAUTHORIZED');
      t.like(err?.details, { reason: 'FORBIDDEN', right: 'admin' });
      // The refused session goes on; an admin reads another session's export.
      t.like(await other.call<'STATUS'>({ type: 'STATUS' }), { serverId: 's1' });
      t.is((await tokenHolder.call<'SNAPSHOT_READ'>(read)).payload.length, Math.min(64, snap.bytes));
    } finally {
      maker.close();
      other.close();
      tokenHolder.close();
    }
  });
});

test('a wrong password and an unknown user get the same error, then the connection closes', async (t) => {
  await withTokenServer(async ({ address, asAdmin, passwordFile }) => {
    await ok(t, asAdmin('user', 'add', 'alice', '--new-password-file', passwordFile('alice', 'right')));
    const answers: { code: string; message: string; details: unknown }[] = [];
    for (const login of [
      { user: 'alice', password: 'wrong' },
      { user: 'mallory', password: 'right' },
    ]) {
      const raw = await RawConnection.open(address);
      const err = await t.throwsAsync(raw.hello(login), { instanceOf: SegmemError });
      await waitFor(() => raw.closed, 'the server closes the connection after the refusal', 5000);
      answers.push({ code: err!.code, message: err!.message, details: err!.details });
      raw.close();
    }
    t.deepEqual(answers[0], answers[1], 'the same answer for a wrong password and an unknown user');
    t.like(answers[0], { code: 'UNAUTHORIZED', message: 'bad user name or password' });
    // Once users exist, a HELLO with neither a login nor the token is refused; the token still works.
    const bare = await RawConnection.open(address);
    const err = await t.throwsAsync(bare.hello(), { instanceOf: SegmemError });
    t.is(err?.code, 'UNAUTHORIZED');
    bare.close();
    await t.throwsAsync(connect({ servers: [address], user: 'alice', password: 'nope' }), {
      instanceOf: SegmemError,
      message: /bad user name or password/,
    });
    const seg = await connect({ servers: [address], user: 'alice', password: 'right' });
    await seg.close();
    // Bad login options are refused before dialling.
    await t.throwsAsync(connect({ servers: [address], user: 'alice' }), { message: /user and password/ });
    await t.throwsAsync(connect({ servers: [address], user: 'a l', password: 'x' }), {
      message: /user must be/,
    });
  });
});

test('users survive a restart of a single server; without a token the first user turns access control on', async (t) => {
  const dir = tempDir();
  const dataDir = join(dir.path, 'd');
  const pw = join(dir.path, 'root.pw');
  writeFileSync(pw, 'root-pass\n');
  let server = await startServerProcess({ dataDir, fsync: 'batch' });
  try {
    // No users: a HELLO naming a user is refused, and an open client may do everything (as before users).
    await t.throwsAsync(connect({ servers: [server.address], user: 'root', password: 'root-pass' }), {
      message: /bad user name or password/,
    });
    const open = await connect({ servers: [server.address] });
    await open.create('data/x', 4);
    await ok(
      t,
      segmem(['user', 'add', 'root', '--admin', '--new-password-file', pw, '--servers', server.address]),
    );
    await ok(
      t,
      segmem(['user', 'add', 'app', '--new-password-file', pw, '--servers', server.address], {
        SEGMEM_USER: 'root',
        SEGMEM_PASSWORD: 'root-pass',
      }),
    );
    await ok(
      t,
      segmem(['acl', 'set', 'app', 'data/', 'read', '--servers', server.address], {
        SEGMEM_USER: 'root',
        SEGMEM_PASSWORD: 'root-pass',
      }),
    );
    // The open session lost its rights when the first user appeared.
    await refused(t, open.stat('data/x'), 'read', 'data/x');
    await open.close();
    await server.stop();
    server = await startServerProcess({ dataDir, fsync: 'batch' });
    const app = await connect({ servers: [server.address], user: 'app', password: 'root-pass' });
    try {
      t.is((await app.stat('data/x')).size, 4);
      await refused(t, app.create('data/y', 4), 'write', 'data/y');
    } finally {
      await app.close();
    }
    await t.throwsAsync(connect({ servers: [server.address] }), {
      message: /log in with a user and password/,
    });
  } finally {
    await server.stop();
    dir.cleanup();
  }
});

test('users and rules are replicated: after the leader dies, the new leader logs users in and holds them to their rules', async (t) => {
  const dir = tempDir();
  const pw = join(dir.path, 'u.pw');
  writeFileSync(pw, 'u-pass\n');
  const cluster = await TestCluster.start(3, dir.path, 'batch');
  let seg: Segment | null = null;
  try {
    const servers = cluster.addresses.join(',');
    await untilItWorks(
      () =>
        ok(t, segmem(['user', 'add', 'root', '--admin', '--new-password-file', pw, '--servers', servers])),
      'adding root',
    );
    const asRoot = { SEGMEM_USER: 'root', SEGMEM_PASSWORD: 'u-pass' };
    await ok(t, segmem(['user', 'add', 'app', '--new-password-file', pw, '--servers', servers], asRoot));
    await ok(t, segmem(['acl', 'set', 'app', 'jobs/', 'write', '--servers', servers], asRoot));
    // A session opened before the leader dies logs in again on the new leader by itself.
    const before = await connect({ servers: cluster.addresses, user: 'app', password: 'u-pass' });
    await before.create('jobs/0', 8);
    const leader = await waitFor(() => cluster.leader(), 'a leader');
    await cluster.kill(leader.id);
    try {
      await before.update('jobs/0', (h) => h.view.setUint32(0, 1));
      await refused(t, before.create('other/0', 8), 'write', 'other/0');
    } finally {
      await before.close();
    }
    seg = await untilItWorks(
      () =>
        connect({
          servers: cluster.addresses.filter((a) => a !== leader.address),
          user: 'app',
          password: 'u-pass',
        }),
      'logging in on the new leader',
    );
    await seg.create('jobs/1', 8);
    await seg.update('jobs/1', (h) => h.view.setUint32(0, 5));
    await refused(t, seg.create('other/1', 8), 'write', 'other/1');
    t.deepEqual(
      (await seg.list()).map((o) => o.name),
      ['jobs/0', 'jobs/1'],
    );
  } catch (err) {
    t.log(cluster.history());
    throw err;
  } finally {
    await seg?.close();
    await cluster.stopAll();
    dir.cleanup();
  }
});
