/**
 * The operator commands, `segmem` and `segmem-server`, as users run them: real processes against real
 * servers. Help and version on every command (and docs/operations.md listing the same options), strict
 * argument checking, one-line errors, bounded waits against unreachable servers, the data commands and
 * `status` on one server and on a 3-member group, `up` with a damaged member, and `restore --data D1 D2 D3`.
 *
 * The tests run one after the other: each starts servers and dozens of node processes, and all of them at
 * once (beside the rest of the suite) loaded a 2-CPU machine so that servers took more than 15 s to start.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join, resolve } from 'node:path';
import ava, { type ExecutionContext } from 'ava';
import { connect } from '../src/index.js';
import {
  consecutivePorts,
  fixturesDir,
  freePort,
  pool,
  runNode,
  SERVER_READY_MS,
  segmemBin,
  serverBin,
  startServerProcess,
  TestCluster,
  tempDir,
  untilItWorks,
  waitFor,
} from './helpers.js';

/** Every test of this file runs alone (see above). */
const test = ava.serial;

type Run = { code: number | null; stdout: string; stderr: string };

function segmem(args: string[], env: Record<string, string> = {}, timeoutMs = 60_000): Promise<Run> {
  return runNode(segmemBin, args, { env: { SEGMEM_SERVERS: '', SEGMEM_TOKEN: '', ...env }, timeoutMs }).done;
}

/** Runs `segmem` and resolves with its stdout as bytes (runNode reads lines, which would add a newline). */
function segmemBytes(args: string[], env: Record<string, string> = {}): Promise<Buffer> {
  return new Promise((resolveBytes, reject) => {
    const proc = spawn(process.execPath, [segmemBin, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    const chunks: Buffer[] = [];
    let stderr = '';
    proc.stdout.on('data', (c: Buffer) => chunks.push(c));
    proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => proc.kill('SIGKILL'), 60_000);
    proc.once('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolveBytes(Buffer.concat(chunks));
      else reject(new Error(`segmem ${args.join(' ')} exited with ${code}: ${stderr}`));
    });
  });
}

/** Asserts `r` failed with exactly one line on stderr, `segmem: <message> (<code>)`. */
function oneLineError(t: ExecutionContext, r: Run, code: string, message: RegExp, program = 'segmem'): void {
  t.is(r.code, 1, `exit code 1: ${r.stderr}`);
  const lines = r.stderr.trimEnd().split('\n');
  t.is(lines.length, 1, `one line on stderr: ${r.stderr}`);
  t.true(lines[0]!.startsWith(`${program}: `), r.stderr);
  t.true(lines[0]!.endsWith(` (${code})`), r.stderr);
  t.regex(lines[0]!, message);
}

const docs = readFileSync(resolve(fixturesDir, '../../../../docs/operations.md'), 'utf8');

/** The options a --help text lists: label -> default ('' when it states none). */
function helpOptions(help: string): Map<string, string> {
  const section = help.split('\noptions:\n')[1] ?? '';
  const options = new Map<string, string>();
  let label = '';
  let text = '';
  const flush = () => {
    if (!label) return;
    options.set(label, /\(default: (.*)\)$/.exec(text.trim())?.[1] ?? '');
  };
  for (const line of section.split('\n')) {
    const m = /^ {2}(-\S.*?)(?: {2,}(.*))?$/.exec(line);
    if (m) {
      flush();
      label = m[1]!;
      text = m[2] ?? '';
    } else text += ` ${line.trim()}`;
  }
  flush();
  return options;
}

/**
 * The option table under the docs heading `command` (in backticks; or `heading` as it is): label -> default
 * cell (backticks dropped), and whether the section refers to the common options.
 */
function docOptions(
  command: string,
  heading = `\`${command}\``,
): { options: Map<string, string>; common: boolean } {
  const lines = docs.split('\n');
  const start = lines.findIndex((l) => /^#{2,4} /.test(l) && l.replace(/^#+ /, '') === heading);
  if (start < 0) return { options: new Map(), common: false };
  let end = lines.findIndex((l, i) => i > start && /^#{2,4} /.test(l));
  if (end < 0) end = lines.length;
  const section = lines.slice(start + 1, end);
  const options = new Map<string, string>();
  for (const row of section) {
    const m = /^\| `(-[^`]+)` \|.*\|\s*(.*?)\s*\|$/.exec(row);
    if (m) options.set(m[1]!.replaceAll('\\|', '|'), m[2]!.replaceAll('`', '').replaceAll('\\|', '|').trim());
  }
  return { options, common: section.some((l) => l.includes('[common options](#common-options)')) };
}

test('every command prints complete help, and docs/operations.md lists the same options and defaults', async (t) => {
  const overview = await segmem(['--help']);
  t.is(overview.code, 0, overview.stderr);
  const commands = [
    ...overview.stdout
      .split('\ncommands:\n')[1]!
      .split('\n\n')[0]!
      .matchAll(/^ {2}(\S+(?: \S+)?) {2,}/gm),
  ].map((m) => m[1]!);
  t.true(commands.length >= 15, `the overview lists the commands: ${commands.join(', ')}`);
  for (const c of ['up', 'status', 'ls', 'stat', 'get', 'put', 'rm', 'create', 'restore', 'cluster add']) {
    t.true(commands.includes(c), `the overview lists ${c}`);
  }
  const common = docOptions('', 'Common options').options;
  t.deepEqual(
    [...common.keys()],
    [
      '--servers HOST:PORT,...',
      '--timeout MS',
      '--token TOKEN',
      '--user NAME',
      '--password-file FILE',
      '--tls-ca FILE',
      '--tls-cert FILE',
      '--tls-key FILE',
    ],
  );
  // Two at a time: one process per command at once (30 of them) loads a 2-CPU machine for many seconds.
  const helps = await pool(commands, 2, (c) => segmem([...c.split(' '), '--help']));
  for (const [i, command] of commands.entries()) {
    const r = helps[i]!;
    t.is(r.code, 0, `${command} --help: ${r.stderr}`);
    t.true(r.stdout.startsWith(`usage: segmem ${command}`), r.stdout);
    const listed = helpOptions(r.stdout);
    t.true(listed.has('-h, --help'), `${command} --help lists -h, --help`);
    t.true(listed.has('--version'), `${command} --help lists --version`);
    listed.delete('-h, --help');
    listed.delete('--version');
    const doc = docOptions(`segmem ${command}`);
    t.true(doc.options.size > 0 || doc.common, `docs/operations.md has a section for segmem ${command}`);
    const documented = new Map([...doc.options, ...(doc.common ? common : [])]);
    t.deepEqual(
      [...listed.keys()].sort(),
      [...documented.keys()].sort(),
      `segmem ${command}: --help and the docs list the same options`,
    );
    for (const [label, dflt] of listed) {
      t.is(
        documented.get(label) ?? '',
        dflt,
        `segmem ${command} ${label}: the same default in --help and the docs`,
      );
    }
  }
  // `help CMD` and -h say the same; a group alone lists its commands.
  t.is((await segmem(['help', 'put'])).stdout, helps[commands.indexOf('put')]!.stdout);
  t.is((await segmem(['put', '-h'])).stdout, helps[commands.indexOf('put')]!.stdout);
  const group = await segmem(['cluster', '--help']);
  t.is(group.code, 0);
  t.regex(group.stdout, /cluster add/);

  const server = await runNode(serverBin, ['--help']).done;
  t.is(server.code, 0, server.stderr);
  const serverListed = helpOptions(server.stdout);
  serverListed.delete('-h, --help');
  serverListed.delete('--version');
  const serverDoc = docOptions('segmem-server').options;
  t.deepEqual(
    [...serverListed.keys()].sort(),
    [...serverDoc.keys()].sort(),
    'segmem-server options in the docs',
  );
  for (const [label, dflt] of serverListed)
    t.is(serverDoc.get(label), dflt, `segmem-server ${label} default`);
});

test('--version on both binaries and every command names the package version', async (t) => {
  const version = JSON.parse(readFileSync(resolve(serverBin, '../../package.json'), 'utf8'))
    .version as string;
  for (const [bin, args, name] of [
    [segmemBin, ['--version'], 'segmem'],
    [segmemBin, ['up', '--version'], 'segmem'],
    [segmemBin, ['cluster', 'add', '--version'], 'segmem'],
    [serverBin, ['--version'], 'segmem-server'],
  ] as const) {
    const r = await runNode(bin, [...args]).done;
    t.is(r.code, 0, r.stderr);
    t.is(r.stdout, `${name} ${version} (protocol 1)\n`);
  }
});

test('mistakes in the command line are refused with the usage line; other failures are one line', async (t) => {
  const usage = async (args: string[], message: RegExp, usageLine: string) => {
    const r = await segmem(args);
    t.is(r.code, 1, r.stderr);
    const lines = r.stderr.trimEnd().split('\n');
    t.regex(lines[0]!, message, r.stderr);
    t.true(lines[0]!.endsWith('(INVALID_ARGUMENT)'), r.stderr);
    t.is(lines[1], `usage: ${usageLine}`, r.stderr);
    t.is(r.stdout, '');
  };
  await usage(
    ['up', '--bogus'],
    /^segmem: unknown option --bogus/,
    'segmem up [options] [-- SERVER-ARGS...]',
  );
  await usage(['status', 'extra'], /unexpected argument "extra"/, 'segmem status [options]');
  await usage(
    ['ls', 'a', 'b', '--servers', '127.0.0.1:1'],
    /unexpected argument "b"/,
    'segmem ls [PREFIX] [options]',
  );
  await usage(['get'], /segmem get needs NAME/, 'segmem get NAME [options]');
  await usage(['get', 'x', '--out'], /--out needs a value/, 'segmem get NAME [options]');
  await usage(['get', 'x', '--out', '--hex'], /--out needs a value/, 'segmem get NAME [options]');
  await usage(
    ['create', 'x', 'big', '--servers', '127.0.0.1:1'],
    /SIZE must be/,
    'segmem create NAME SIZE [options]',
  );
  await usage(
    ['up', '--port', '1', '--port', '2'],
    /--port is given twice/,
    'segmem up [options] [-- SERVER-ARGS...]',
  );
  await usage(
    ['up', '--fsync', 'sometimes'],
    /--fsync must be one of always, batch, none/,
    'segmem up [options] [-- SERVER-ARGS...]',
  );
  await usage(
    ['put', 'x', '--servers', '127.0.0.1:1'],
    /exactly one of --file FILE or --value TEXT/,
    'segmem put NAME [options]',
  );
  await usage(
    ['ls'],
    /--servers \(or the SEGMEM_SERVERS environment variable\) is required/,
    'segmem ls [PREFIX] [options]',
  );
  const frob = await segmem(['cluster', 'frob']);
  t.is(
    frob.stderr,
    'segmem: unknown command "cluster frob"; segmem cluster has list, add, remove, slots, rebalance, move-slots, add-group, remove-group (INVALID_ARGUMENT)\n(segmem --help lists the commands)\n',
  );
  const unknown = await segmem(['frob']);
  t.is(
    unknown.stderr,
    'segmem: unknown command "frob" (INVALID_ARGUMENT)\n(segmem --help lists the commands)\n',
  );

  const server = await runNode(serverBin, [
    '--id',
    's1',
    'stray',
    '--listen',
    '127.0.0.1:0',
    '--data',
    '/tmp/x',
  ]).done;
  t.is(server.code, 1);
  t.regex(
    server.stderr,
    /^segmem-server: unexpected argument "stray" \(segmem-server takes none\) \(INVALID_ARGUMENT\)\nusage: segmem-server \[options\]/,
  );
  const badFsync = await runNode(serverBin, [
    '--id',
    's1',
    '--listen',
    '127.0.0.1:0',
    '--data',
    '/tmp/x',
    '--fsync',
    'sometimes',
  ]).done;
  t.regex(badFsync.stderr, /--fsync must be one of always, batch, none/);

  // Runtime failures: one line, no usage.
  const dir = tempDir();
  try {
    const missing = await segmem(['snapshot', '--inspect', join(dir.path, 'nope.segsnap')]);
    oneLineError(t, missing, 'NOT_FOUND', /cannot read .*nope\.segsnap/);
    writeFileSync(join(dir.path, 'plain'), 'x');
    const notDir = await runNode(serverBin, [
      '--id',
      's1',
      '--listen',
      '127.0.0.1:0',
      '--data',
      join(dir.path, 'plain', 'd'),
    ]).done;
    oneLineError(t, notDir, 'INVALID_ARGUMENT', /data directory .*plain/, 'segmem-server');
  } finally {
    dir.cleanup();
  }
});

/**
 * A TCP listener on 127.0.0.1 that accepts connections and never answers (a wedged server); it notes when
 * the first connection arrived, which is when a command began trying (its process had started).
 */
async function silentServer(): Promise<{
  address: string;
  firstConnectionAt: () => number | null;
  close(): Promise<void>;
}> {
  const sockets = new Set<import('node:net').Socket>();
  let first: number | null = null;
  const server: Server = createServer((s) => {
    first ??= Date.now();
    sockets.add(s);
    s.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  return {
    address: `127.0.0.1:${port}`,
    firstConnectionAt: () => first,
    close: () =>
      new Promise((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/**
 * How late a command that gave up at its timeout may exit (its timer fires late and its process exits on
 * a loaded machine); much less than a second when the machine is idle.
 */
const EXIT_SLACK_MS = 4000;

test('against unreachable servers every command fails within its timeout, naming the addresses tried', async (t) => {
  const refused = `127.0.0.1:${await freePort()}`;
  const silents: Awaited<ReturnType<typeof silentServer>>[] = [];
  const dir = tempDir();
  try {
    const commands = [
      ['cluster', 'list'],
      ['log', 'tail', 'events'],
      ['log', 'info', 'events'],
      ['snapshot', '--out', join(dir.path, 'x.segsnap')],
      ['status'],
      ['ls'],
      ['stat', 'x'],
      ['get', 'x'],
      ['put', 'x', '--value', 'y'],
      ['rm', 'x'],
      ['create', 'x', '10'],
    ];
    /**
     * Runs `command` against its own silent server (first) and the refused address; `ms` counts from the
     * command's first dial, so the start of a node process (seconds on a loaded machine) is not counted.
     */
    const run = async (command: string[]) => {
      const silent = await silentServer();
      silents.push(silent);
      const r = await segmem([...command, '--servers', `${silent.address},${refused}`], {}, 60_000);
      const dialled = silent.firstConnectionAt();
      return { command, r, silent, ms: dialled === null ? null : Date.now() - dialled };
    };
    // Two at a time: the other tests of this file wait, and the machine has 2 CPUs.
    const results = await pool(commands, 2, run);
    for (const { command, r, silent, ms } of results) {
      oneLineError(t, r, 'UNAVAILABLE', /within 2000 ms/);
      t.true(
        r.stderr.includes(`${silent.address} (no answer to HELLO)`),
        `${command.join(' ')}: ${r.stderr}`,
      );
      t.true(r.stderr.includes(`${refused} (connection refused)`), `${command.join(' ')}: ${r.stderr}`);
      // 2 s of trying, and the exit of the process: it does not keep trying past its timeout.
      t.true(
        ms !== null && ms < 2000 + EXIT_SLACK_MS,
        `${command.join(' ')} ended ${ms} ms after its first dial`,
      );
      t.log(`${command.join(' ')}: ended ${ms} ms after its first dial`);
    }
    t.false(existsSync(join(dir.path, 'x.segsnap')), 'snapshot --out left no file');
    // --timeout MS is honoured.
    const silent = await silentServer();
    silents.push(silent);
    const quick = await segmem(['ls', '--servers', silent.address, '--timeout', '300']);
    const dialled = silent.firstConnectionAt();
    const ms = dialled === null ? null : Date.now() - dialled;
    oneLineError(
      t,
      quick,
      'UNAVAILABLE',
      /no leader reachable within 300 ms: tried 127\.0\.0\.1:\d+ \(no answer to HELLO\)/,
    );
    t.true(ms !== null && ms < 300 + EXIT_SLACK_MS, `ls --timeout 300 ended ${ms} ms after its first dial`);
  } finally {
    for (const silent of silents) await silent.close();
    dir.cleanup();
  }
});

test('data commands on one server: create, put, get, stat, ls, rm, each with --json', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: join(dir.path, 'd') });
  const env = { SEGMEM_SERVERS: server.address };
  const seg = await connect({ servers: [server.address] });
  try {
    const created = await segmem(['create', 'cfg/a', '10000'], env);
    t.is(created.code, 0, created.stderr);
    t.is(created.stdout, 'created "cfg/a": 10000 bytes at address 0\n');
    t.is(
      (await segmem(['create', 'cfg/b', '1K', '--json'], env)).stdout,
      '{"name":"cfg/b","size":1024,"version":1,"address":12288,"created":true}\n',
    );
    oneLineError(t, await segmem(['create', 'cfg/a', '10'], env), 'ALREADY_EXISTS', /cfg\/a/);
    const again = await segmem(['create', 'cfg/a', '10000', '--if-not-exists'], env);
    t.is(again.code, 0, again.stderr);
    t.regex(again.stdout, /"cfg\/a" exists already: 10000 bytes/);

    // put without --offset replaces the whole content: the value, then zeros.
    const file = join(dir.path, 'value.bin');
    writeFileSync(file, Buffer.alloc(9000, 7));
    const put1 = await segmem(['put', 'cfg/a', '--file', file], env);
    t.is(put1.code, 0, put1.stderr);
    t.is(put1.stdout, 'wrote "cfg/a": 9000 of 10000 bytes changed in 1 range, version 2\n');
    const put2 = await segmem(['put', 'cfg/a', '--value', 'hello', '--json'], env);
    t.deepEqual(JSON.parse(put2.stdout), {
      name: 'cfg/a',
      version: 3,
      changedBytes: 9000, // 'hello' over the first 5 sevens, zeros over the other 8995
      ranges: [[0, 9000]],
    });
    let bytes = await seg.read('cfg/a', (h) => Buffer.from(h.bytes));
    t.deepEqual(bytes.subarray(0, 5), Buffer.from('hello'));
    t.true(bytes.subarray(5).equals(Buffer.alloc(9995)), 'zeros after the value');
    // --offset patches in place; the same bytes again change nothing (the version stays).
    t.is((await segmem(['put', 'cfg/a', '--value', 'XY', '--offset', '9998'], env)).code, 0);
    const same = await segmem(['put', 'cfg/a', '--value', 'XY', '--offset', '9998'], env);
    t.is(same.stdout, '"cfg/a" unchanged (version 4)\n');
    bytes = await seg.read('cfg/a', (h) => Buffer.from(h.bytes));
    t.deepEqual(bytes.subarray(0, 5), Buffer.from('hello'), 'the rest left as it was');
    t.deepEqual(bytes.subarray(9998), Buffer.from('XY'));
    // Too long: refused, nothing changed.
    oneLineError(
      t,
      await segmem(['put', 'cfg/a', '--value', 'XYZ', '--offset', '9998'], env),
      'INVALID_ARGUMENT',
      /3 bytes at offset 9998 do not fit in "cfg\/a" \(10000 bytes\)/,
    );
    writeFileSync(file, Buffer.alloc(10001, 1));
    oneLineError(
      t,
      await segmem(['put', 'cfg/a', '--file', file], env),
      'INVALID_ARGUMENT',
      /the value is 10001 bytes; "cfg\/a" is 10000 bytes/,
    );
    t.is((await seg.stat('cfg/a')).version, 4, 'a refused put changes nothing');
    oneLineError(t, await segmem(['put', 'nope', '--value', 'x'], env), 'NOT_FOUND', /nope/);

    // get: raw bytes, a file, a hex dump, JSON.
    t.deepEqual(await segmemBytes(['get', 'cfg/b'], env), Buffer.alloc(1024));
    const out = join(dir.path, 'got.bin');
    t.is((await segmem(['get', 'cfg/a', '--out', out], env)).stdout, '');
    t.deepEqual(readFileSync(out), bytes);
    const hex = await segmem(['get', 'cfg/a', '--hex'], env);
    t.is(
      hex.stdout,
      [
        '00000000  68 65 6c 6c 6f 00 00 00  00 00 00 00 00 00 00 00  |hello...........|',
        '00000010  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|',
        '*',
        '00002700  00 00 00 00 00 00 00 00  00 00 00 00 00 00 58 59  |..............XY|',
        '00002710',
        '',
      ].join('\n'),
    );
    const asJson = JSON.parse((await segmem(['get', 'cfg/a', '--json'], env)).stdout);
    t.deepEqual(
      { ...asJson, data: undefined },
      { name: 'cfg/a', size: 10000, version: 4, address: 0, data: undefined },
    );
    t.deepEqual(Buffer.from(asJson.data, 'base64'), bytes);

    // stat and ls.
    t.is(
      (await segmem(['stat', 'cfg/a'], env)).stdout,
      'name     cfg/a\nsize     10000\nversion  4\naddress  0\npages    3\n',
    );
    t.deepEqual(JSON.parse((await segmem(['stat', 'cfg/b', '--json'], env)).stdout), {
      name: 'cfg/b',
      size: 1024,
      version: 1,
      address: 12288,
    });
    oneLineError(t, await segmem(['stat', 'nope'], env), 'NOT_FOUND', /no object named "nope"/);
    await seg.create('other', 4);
    t.is(
      (await segmem(['ls', 'cfg/'], env)).stdout,
      'SIZE   VERSION  ADDRESS  NAME\n10000  4        0        cfg/a\n1024   1        12288    cfg/b\n',
    );
    t.deepEqual(
      JSON.parse((await segmem(['ls', '--json'], env)).stdout).map((o: { name: string }) => o.name),
      ['cfg/a', 'cfg/b', 'other'],
    );
    t.is((await segmem(['ls', 'none/'], env)).stdout, '');

    // rm.
    t.is((await segmem(['rm', 'cfg/b'], env)).stdout, 'deleted "cfg/b"\n');
    t.deepEqual(JSON.parse((await segmem(['rm', 'other', '--json'], env)).stdout), {
      name: 'other',
      deleted: true,
    });
    oneLineError(t, await segmem(['rm', 'cfg/b'], env), 'NOT_FOUND', /cfg\/b/);
    t.deepEqual(
      (await seg.list()).map((o) => o.name),
      ['cfg/a'],
    );

    // A writer holds the object: get and put wait for it up to the timeout, and status lists the lock.
    const held = await seg.acquireWrite('cfg/a');
    // --timeout also bounds reaching the server (a HELLO, committed): 2 s, not less, on a loaded machine.
    const blocked = await segmem(['get', 'cfg/a', '--timeout', '2000'], env);
    oneLineError(t, blocked, 'TIMEOUT', /"cfg\/a" is held by another client; no read access within 2000 ms/);
    // The put waits as long as status (a node process each time) takes to see it waiting.
    const waiting = segmem(['put', 'cfg/a', '--value', 'after', '--timeout', '60000'], env);
    const status = await waitFor(
      async () => {
        const s = JSON.parse((await segmem(['status', '--json'], env)).stdout);
        return s.locks[0]?.waiting === 1 ? s : undefined;
      },
      'the waiting put in status',
      60_000,
    );
    t.deepEqual(status.locks, [{ name: 'cfg/a', mode: 'write', holders: 1, waiting: 1 }]);
    await held.release();
    const waited = await waiting;
    t.is(waited.code, 0, waited.stderr);
    t.deepEqual(await seg.read('cfg/a', (h) => Buffer.from(h.bytes.subarray(0, 6))), Buffer.from('after\0'));
  } finally {
    await seg.close();
    await server.stop();
    dir.cleanup();
  }
});

test('a command that fails on an error the server answered still ends its session at once', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: join(dir.path, 'd') });
  const env = { SEGMEM_SERVERS: server.address };
  try {
    t.is((await segmem(['create', 'cfg/a', '16'], env)).code, 0);
    oneLineError(t, await segmem(['create', 'cfg/a', '16'], env), 'ALREADY_EXISTS', /cfg\/a/);
    oneLineError(t, await segmem(['get', 'nope'], env), 'NOT_FOUND', /nope/);
    oneLineError(
      t,
      await segmem(['put', 'cfg/a', '--value', 'x'.repeat(17)], env),
      'INVALID_ARGUMENT',
      /16 bytes/,
    );
    // Each said GOODBYE before exiting: no session is left to expire 5 s later with a lock it might hold.
    const status = JSON.parse((await segmem(['status', '--json'], env)).stdout);
    t.is(status.members[0].sessions, 0);
  } finally {
    await server.stop();
    dir.cleanup();
  }
});

test('status of one server, and of a 3-member group with a member down and without a leader', async (t) => {
  const dir = tempDir();
  const single = await startServerProcess({ dataDir: join(dir.path, 'single'), fsync: 'always' });
  try {
    const r = await segmem(['status', '--servers', single.address]);
    t.is(r.code, 0, r.stderr);
    t.regex(
      r.stdout,
      /^cluster \S+, leader s1 in term 0, 1 of 1 member up\nID +ADDRESS +ROLE +TERM +COMMIT +APPLIED +LAG +WAL +SNAPSHOT +SESSIONS +OBJECTS +LOCKED\ns1 +127\.0\.0\.1:\d+ +leader +0 /,
    );
    const s = JSON.parse((await segmem(['status', '--json', '--servers', single.address])).stdout);
    t.is(s.healthy, true);
    t.is(s.members[0].fsync, 'always');
    t.true(s.members[0].walBytes > 0, 'the WAL size is reported');
  } finally {
    await single.stop();
  }
  const cluster = await TestCluster.start(3, join(dir.path, 'group'));
  try {
    const seg = await connect({ servers: cluster.addresses });
    await seg.create('x', 100);
    await seg.update('x', (h) => h.bytes.write('x'));
    await seg.close();
    // One address is enough: the others come from the answers.
    const one = cluster.addresses[2]!;
    const all = await untilItWorks(async () => {
      const r = await segmem(['status', '--json', '--servers', one]);
      const s = JSON.parse(r.stdout);
      if (r.code !== 0 || s.members.some((m: { lag: number }) => m.lag !== 0))
        throw new Error(r.stdout + r.stderr);
      return s;
    }, 'a healthy, caught-up group');
    t.is(all.members.length, 3);
    t.deepEqual(all.members.map((m: { id: string }) => m.id).sort(), ['s1', 's2', 's3']);
    t.is(all.members.filter((m: { role: string }) => m.role === 'leader').length, 1);
    for (const m of all.members) {
      t.is(m.objects, 1);
      t.is(m.appliedIndex, all.members[0].appliedIndex);
      t.is(m.term, all.term);
    }
    // A follower down: exit 1, one line naming it; the table still shows the others.
    const leader = all.leader as string;
    const follower = ['s1', 's2', 's3'].find((id) => id !== leader)!;
    await cluster.kill(follower);
    const down = await segmem(['status', '--servers', cluster.addresses.join(',')]);
    t.is(down.code, 1);
    t.regex(
      down.stderr,
      new RegExp(
        `^segmem: 1 of 3 members down: ${follower} at 127\\.0\\.0\\.1:\\d+ \\(connection refused\\) \\(UNAVAILABLE\\)\\n$`,
      ),
    );
    t.regex(down.stdout, new RegExp(`\\n${follower} +127\\.0\\.0\\.1:\\d+ +down `));
    t.regex(down.stdout, new RegExp(`\\n${leader} +127\\.0\\.0\\.1:\\d+ +leader `));
    // Two down: no leader (the last one steps down once it misses the majority).
    const last = ['s1', 's2', 's3'].find((id) => id !== leader && id !== follower)!;
    await cluster.kill(leader);
    const leaderless = await untilItWorks(async () => {
      const r = await segmem(['status', '--servers', cluster.addresses.join(',')]);
      if (!r.stderr.includes('no member leads')) throw new Error(r.stderr);
      return r;
    }, 'no leader in status');
    t.is(leaderless.code, 1);
    t.regex(leaderless.stderr, /^segmem: no member leads; 2 of 3 members down: /);
    t.regex(
      leaderless.stdout,
      new RegExp(`\\n${last} +127\\.0\\.0\\.1:\\d+ +(follower|preCandidate|candidate) `),
    );
  } finally {
    await cluster.stopAll();
    dir.cleanup();
  }
});

test('data commands on a 3-member group go to the leader from any address', async (t) => {
  const dir = tempDir();
  const cluster = await TestCluster.start(3, dir.path);
  try {
    // Each command is given a follower first: it follows the redirect.
    const servers = cluster.addresses.join(',');
    await untilItWorks(async () => {
      const r = await segmem(['create', 'shared', '64', '--servers', servers]);
      if (r.code !== 0) throw new Error(r.stderr);
    }, 'create on the elected leader');
    const leader = cluster.leader()!;
    const follower = cluster.members.find((m) => m !== leader)!;
    const env = { SEGMEM_SERVERS: `${follower.address},${leader.address}` };
    t.is((await segmem(['put', 'shared', '--value', 'replicated'], env)).code, 0);
    t.deepEqual(await segmemBytes(['get', 'shared'], env), Buffer.from(`replicated${'\0'.repeat(54)}`));
    t.is(JSON.parse((await segmem(['stat', 'shared', '--json'], env)).stdout).version, 2);
    t.is((await segmem(['ls'], env)).stdout.split('\n')[1], '64    2        0        shared');
    // The write is on every member: the leader gone, the new leader serves it.
    await cluster.kill(leader.id);
    const after = await untilItWorks(
      () => segmemBytes(['get', 'shared', '--servers', servers]),
      'a read after the leader died',
    );
    t.is(after.subarray(0, 10).toString(), 'replicated');
    t.is((await segmem(['rm', 'shared', '--servers', servers])).code, 0);
  } finally {
    await cluster.stopAll();
    dir.cleanup();
  }
});

test('segmem up starts the healthy members when one is damaged, says why, and passes --fsync through', async (t) => {
  const dir = tempDir();
  // A failed wait must not leave `up` (and its servers) running: it stops them on SIGTERM.
  const ups: ReturnType<typeof runNode>[] = [];
  const stopUps = async () => {
    for (const up of ups) {
      if (up.proc.exitCode === null && up.proc.signalCode === null) up.proc.kill('SIGTERM');
      await up.done.catch(() => {});
    }
  };
  try {
    const port = await consecutivePorts(3);
    const args = ['up', '--servers', '3', '--port', String(port), '--dir', dir.path, '--fsync', 'always'];
    // A first run creates the members' directories; then s2's meta.json is damaged.
    let ready = '';
    const first = runNode(segmemBin, args, {
      timeoutMs: 2 * SERVER_READY_MS,
      onLine: (line) => line.startsWith('SEGMEM_SERVERS=') && (ready = line),
    });
    ups.push(first);
    await waitFor(() => ready, 'the first up to be ready', SERVER_READY_MS);
    first.proc.kill('SIGINT');
    t.is((await first.done).code, 0, 'every server started and stopped cleanly');
    writeFileSync(join(dir.path, 's2', 'meta.json'), '{ damaged');
    let servers = '';
    const second = runNode(segmemBin, args, {
      timeoutMs: 2 * SERVER_READY_MS,
      onLine: (line) => line.startsWith('SEGMEM_SERVERS=') && (servers = line.slice(15)),
    });
    ups.push(second);
    await waitFor(() => servers, 'up to print SEGMEM_SERVERS', SERVER_READY_MS);
    t.is(servers, `127.0.0.1:${port},127.0.0.1:${port + 2}`, 'the two healthy members run');
    t.regex(
      second.stderr(),
      /segmem: server s2 did not start: cannot parse .*meta\.json.*\(INVALID_ARGUMENT\), exit code 1; the others run on\n/,
    );
    const status = await untilItWorks(async () => {
      const r = await segmem(['status', '--json', '--servers', servers]);
      const s = JSON.parse(r.stdout);
      if (!s.leader) throw new Error(r.stdout);
      return { r, s };
    }, 'a leader among the two');
    t.is(status.r.code, 1, 'a member is down');
    t.deepEqual(
      status.s.members.map((m: { id: string; up: boolean }) => [m.id, m.up]),
      [
        ['s1', true],
        ['s2', false],
        ['s3', true],
      ],
    );
    for (const m of status.s.members.filter((x: { up: boolean }) => x.up))
      t.is(m.fsync, 'always', '--fsync reached the servers');
    second.proc.kill('SIGTERM');
    const end = await second.done;
    t.is(end.code, 1, 'a server had failed to start');
  } finally {
    await stopUps();
    dir.cleanup();
  }
});

test('restore --data D1 D2 D3 builds all three members (and the other spellings do too)', async (t) => {
  const dir = tempDir();
  const server = await startServerProcess({ dataDir: join(dir.path, 'source') });
  const file = join(dir.path, 'backup.segsnap');
  try {
    const seg = await connect({ servers: [server.address] });
    await seg.create('kept', 16);
    await seg.update('kept', (h) => h.bytes.write('restored bytes'));
    await seg.close();
    t.is((await segmem(['snapshot', '--out', file, '--servers', server.address])).code, 0);
  } finally {
    await server.stop();
  }
  try {
    const spellings = [
      (d: string[]) => ['--data', ...d],
      (d: string[]) => ['--data', d.join(',')],
      (d: string[]) => d.flatMap((x) => ['--data', x]),
    ];
    for (const [i, spelling] of spellings.entries()) {
      const root = join(dir.path, `r${i}`);
      const dirs = ['s1', 's2', 's3'].map((id) => join(root, id));
      const r = await segmem(['restore', file, ...spelling(dirs), '--cluster-id', `restored-${i}`]);
      t.is(r.code, 0, r.stderr);
      t.regex(r.stdout, /into 3 data directories \(cluster restored-\d, servers s1, s2, s3\)/);
      for (const [k, d] of dirs.entries()) {
        const meta = JSON.parse(readFileSync(join(d, 'meta.json'), 'utf8'));
        t.is(meta.serverId, `s${k + 1}`);
        t.is(meta.clusterId, `restored-${i}`);
      }
    }
    // The first spelling's members form one cluster holding the snapshot.
    const cluster = await TestCluster.start(3, join(dir.path, 'r0'), 'batch', () => [
      '--cluster-id',
      'restored-0',
    ]);
    try {
      const got = await untilItWorks(
        () => segmemBytes(['get', 'kept', '--servers', cluster.addresses.join(',')]),
        'the restored object',
      );
      t.deepEqual(got, Buffer.from('restored bytes\0\0'));
      const s = JSON.parse((await segmem(['status', '--json', '--servers', cluster.addresses[0]!])).stdout);
      t.is(s.members.length, 3);
    } finally {
      await cluster.stopAll();
    }
    // FILE after --data is swallowed by it: said so.
    const swallowed = await segmem(['restore', '--data', join(dir.path, 'x1'), file]);
    t.regex(
      swallowed.stderr,
      /^segmem: segmem restore needs FILE \(give it before --data, whose directories run up to the next option\) \(INVALID_ARGUMENT\)\n/,
    );
    const mismatch = await segmem(['restore', file, '--data', 'a', 'b', '--ids', 'x']);
    t.regex(mismatch.stderr, /--data names 2 directories but --ids 1 server ids/);
  } finally {
    dir.cleanup();
  }
});

test("a member's data directory started without --peers is refused in one line; segmem-server's contract holds", async (t) => {
  const dir = tempDir();
  try {
    const cluster = await TestCluster.start(3, dir.path);
    const s1 = cluster.member('s1');
    await untilItWorks(async () => {
      const r = await segmem(['create', 'x', '4', '--servers', cluster.addresses.join(',')]);
      if (r.code !== 0) throw new Error(r.stderr);
    }, 'a write in the group');
    t.deepEqual(await cluster.stopAll(), [0, 0, 0], 'SIGTERM: every member exits 0');
    const alone = await runNode(serverBin, ['--id', 's1', '--listen', '127.0.0.1:0', '--data', s1.dataDir])
      .done;
    oneLineError(
      t,
      alone,
      'INVALID_ARGUMENT',
      /data directory .* belongs to a cluster member .*start it with --peers \(or --config\) naming its group/,
      'segmem-server',
    );
    t.false(alone.stdout.includes('ready'));

    // --config FILE --id ID: the ready line, then SIGTERM exits 0.
    const config = join(dir.path, 'segmem.json');
    writeFileSync(
      config,
      JSON.stringify({
        servers: { solo: `127.0.0.1:${await freePort()}` },
        dataDir: join(dir.path, '{id}'),
      }),
    );
    let line = '';
    const solo = runNode(serverBin, ['--config', config, '--id', 'solo', '--fsync', 'none'], {
      timeoutMs: 2 * SERVER_READY_MS,
      onLine: (l) => (line ||= l),
    });
    try {
      await waitFor(() => line, 'the ready line', SERVER_READY_MS);
      t.regex(line, /^segmem-server solo ready on 127\.0\.0\.1:\d+$/);
    } finally {
      solo.proc.kill('SIGTERM');
    }
    t.is((await solo.done).code, 0);
  } finally {
    dir.cleanup();
  }
});

test('--token (or SEGMEM_TOKEN) reaches a server that requires one; without it, one UNAUTHORIZED line', async (t) => {
  const dir = tempDir();
  const config = join(dir.path, 'segmem.json');
  writeFileSync(config, JSON.stringify({ token: 's3cret' }));
  const server = await startServerProcess({ dataDir: join(dir.path, 'd'), extra: ['--config', config] });
  try {
    const servers = ['--servers', server.address];
    oneLineError(t, await segmem(['ls', ...servers]), 'UNAUTHORIZED', /^segmem: bad or missing token/);
    oneLineError(
      t,
      await segmem(['status', ...servers]),
      'UNAUTHORIZED',
      /^segmem: bad or missing token \(127\.0\.0\.1:\d+\)/,
    );
    t.is((await segmem(['create', 'x', '4', ...servers, '--token', 's3cret'])).code, 0);
    const listed = await segmem(['ls', ...servers], { SEGMEM_TOKEN: 's3cret' });
    t.is(listed.code, 0, listed.stderr);
    t.regex(listed.stdout, /\n4 +1 +0 +x\n$/);
    t.is((await segmem(['status', ...servers, '--token', 's3cret'])).code, 0);
  } finally {
    await server.stop();
    dir.cleanup();
  }
});
