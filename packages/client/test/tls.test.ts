/**
 * TLS on the servers' port, against real `segmem-server` processes over real sockets, with certificates made
 * by `segmem cert` (the system's openssl): a client that trusts the CA works, one that does not is refused
 * with a typed error, a plain client is told in the clear that TLS is required, members of a TLS cluster elect and commit over TLS, and
 * bad certificate files stop a server before it listens.
 */
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { get as plainGet } from 'node:http';
import { get as httpsGet, type RequestOptions } from 'node:https';
import { connect as netConnect, type Socket } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  decodeError,
  encodeRequest,
  type Frame,
  FrameDecoder,
  MessageType,
  PROTOCOL_VERSION,
  SegmemError,
} from '@segmem/protocol';
import test, { type ExecutionContext } from 'ava';
import { connect } from '../src/index.js';
import {
  bump,
  freePort,
  runNode,
  segmemBin,
  serverBin,
  startServerProcess,
  TestCluster,
  tempDir,
  untilItWorks,
  waitFor,
} from './helpers.js';

const certs = tempDir('segmem-tls-');
const compatUrl = pathToFileURL(resolve(dirname(fileURLToPath(import.meta.url)), '../src/compat.js')).href;
const file = (name: string) => join(certs.path, name);
/** The server options of a TLS server with the certificates of `segmem cert`. */
const serverTls = () => [
  '--tls-cert',
  file('server.pem'),
  '--tls-key',
  file('server-key.pem'),
  '--tls-ca',
  file('ca.pem'),
];

test.before(async () => {
  const r = await runNode(segmemBin, [
    'cert',
    '--out',
    certs.path,
    '--host',
    '127.0.0.1',
    '--host',
    'localhost',
  ]).done;
  if (r.code !== 0) throw new Error(`segmem cert failed: ${r.stderr}`);
});
test.after.always(() => certs.cleanup());

test('segmem cert writes a CA, a server and a client certificate, keys readable by the owner only', (t) => {
  for (const name of ['ca', 'server', 'client']) {
    t.true(readFileSync(file(`${name}.pem`), 'utf8').startsWith('-----BEGIN CERTIFICATE-----'), name);
    t.is(statSync(file(`${name}-key.pem`)).mode & 0o777, 0o600, `${name}-key.pem has mode 0600`);
  }
  t.false(existsSync(join(certs.path, 'openssl.cnf')), 'no working files left behind');
});

test('segmem cert signs with the CA already in DIR, and will not replace a CA whose key is not there', async (t) => {
  const out = tempDir('segmem-tls-again-');
  try {
    const first = await runNode(segmemBin, ['cert', '--out', out.path, '--host', '127.0.0.1']).done;
    t.is(first.code, 0, first.stderr);
    const ca = readFileSync(join(out.path, 'ca.pem'), 'utf8');
    const again = await runNode(segmemBin, ['cert', '--out', out.path, '--host', 'localhost']).done;
    t.is(again.code, 0, again.stderr);
    t.regex(again.stdout, /using the CA in /);
    t.is(readFileSync(join(out.path, 'ca.pem'), 'utf8'), ca, 'the same CA');
    rmSync(join(out.path, 'ca-key.pem'));
    const noKey = await runNode(segmemBin, ['cert', '--out', out.path, '--host', 'localhost']).done;
    t.is(noKey.code, 1);
    t.regex(noKey.stderr, /^segmem: .*ca\.pem exists without ca-key\.pem beside it.* \(ALREADY_EXISTS\)$/m);
    t.is(readFileSync(join(out.path, 'ca.pem'), 'utf8'), ca, 'the CA is left alone');
  } finally {
    out.cleanup();
  }
});

test('segmem cert without openssl on PATH fails with one line saying so', async (t) => {
  const out = tempDir('segmem-tls-noopenssl-');
  try {
    const r = await runNode(segmemBin, ['cert', '--out', out.path, '--host', '127.0.0.1'], {
      env: { PATH: '' },
    }).done;
    t.is(r.code, 1);
    t.is(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
    t.regex(r.stderr, /^segmem: segmem cert needs the openssl program on PATH .*\(UNAVAILABLE\)$/m);
    t.false(existsSync(join(out.path, 'ca.pem')));
  } finally {
    out.cleanup();
  }
});

/** A raw TCP connection that sends a HELLO frame (or `bytes`) in the clear and records the frames that come back. */
async function plainHello(
  address: string,
  bytes?: Buffer,
): Promise<{ frames: Frame[]; received: number; closed: Promise<void> }> {
  const at = address.lastIndexOf(':');
  const socket: Socket = await new Promise((resolve, reject) => {
    const s = netConnect({ host: address.slice(0, at), port: Number(address.slice(at + 1)) }, () =>
      resolve(s),
    );
    s.once('error', reject);
  });
  const decoder = new FrameDecoder();
  const result = {
    frames: [] as Frame[],
    received: 0,
    closed: new Promise<void>((r) => socket.once('close', () => r())),
  };
  socket.on('data', (chunk: Buffer) => {
    result.received += chunk.length;
    result.frames.push(...decoder.push(chunk));
  });
  socket.on('error', () => {});
  const hello = { type: 'HELLO', protocol: PROTOCOL_VERSION, token: null, sessionTimeoutMs: 5000 } as const;
  for (const part of bytes ? [bytes] : encodeRequest({ ...hello, clientName: 'plain' }, 1))
    socket.write(part);
  return result;
}

/** Checks that a plain connection got one UNAVAILABLE error frame, in the clear, saying TLS is required. */
function assertTlsRequired(t: ExecutionContext, plain: { frames: Frame[] }): void {
  t.is(plain.frames.length, 1, 'one frame');
  t.is(plain.frames[0]!.type, MessageType.ERROR);
  t.is(plain.frames[0]!.requestId, 0);
  const err = decodeError(plain.frames[0]!);
  t.is(err.code, 'UNAVAILABLE');
  t.is(err.details?.reason, 'TLS_REQUIRED');
  t.regex(err.message, /requires TLS/);
}

test('a TLS server: a client with the CA works, one without it is refused, a plain client is told TLS is required', async (t) => {
  const data = tempDir();
  const server = await startServerProcess({ dataDir: data.path, fsync: 'none', extra: serverTls() });
  const ca = readFileSync(file('ca.pem'));
  try {
    const seg = await connect({ servers: [server.address], tls: { ca } });
    try {
      await seg.create('tls/counter', 8);
      await bump(seg, 'tls/counter', 3);
      t.is(await seg.read('tls/counter', (h) => h.bytes.readUInt32LE(0)), 3);

      // No CA: the self-made CA is not among the system's roots.
      const untrusted = await connect({ servers: [server.address], tls: {} }).catch((e: unknown) => e);
      t.true(SegmemError.is(untrusted, 'UNAVAILABLE'), String(untrusted));
      t.is((untrusted as SegmemError).details?.reason, 'TLS');
      t.regex((untrusted as SegmemError).message, /TLS handshake with .* failed: .*certificate/);

      // A certificate for other names than the one dialled.
      const otherName = await connect({
        servers: [server.address],
        tls: { ca, servername: 'example.com' },
      }).catch((e: unknown) => e);
      t.is((otherName as SegmemError).details?.tlsCode, 'ERR_TLS_CERT_ALTNAME_INVALID');

      // In the clear: the HELLO frame is never read as one; one error frame comes back, the connection closes.
      const plain = await plainHello(server.address);
      await plain.closed;
      assertTlsRequired(t, plain);
      // A frame whose length starts with 0x16, the byte a TLS handshake starts with: still no TLS.
      const lookalike = Buffer.alloc(0x16 + 4);
      lookalike.writeUInt32LE(0x16, 0);
      const plain16 = await plainHello(server.address, lookalike);
      await plain16.closed;
      assertTlsRequired(t, plain16);
      // The library says so at once, not when its session timeout has passed.
      const plainStarted = Date.now();
      const plainClient = await connect({ servers: [server.address], sessionTimeoutMs: 10_000 }).catch(
        (e: unknown) => e,
      );
      t.true(SegmemError.is(plainClient, 'UNAVAILABLE'), String(plainClient));
      t.is((plainClient as SegmemError).details?.reason, 'TLS_REQUIRED');
      t.regex((plainClient as SegmemError).message, /^127\.0\.0\.1:\d+: .*requires TLS/);
      t.true(Date.now() - plainStarted < 5000, `took ${Date.now() - plainStarted} ms`);

      // The server is still up and the TLS session still serves.
      await bump(seg, 'tls/counter');
      t.is(await seg.read('tls/counter', (h) => h.bytes.readUInt32LE(0)), 4);

      // The CLI over TLS, and refused without the CA.
      const status = await runNode(segmemBin, [
        'status',
        '--servers',
        server.address,
        '--timeout',
        '10000',
        '--tls-ca',
        file('ca.pem'),
      ]).done;
      t.is(status.code, 0, status.stderr);
      t.regex(status.stdout, /leader/);
      const get = await runNode(segmemBin, [
        'get',
        'tls/counter',
        '--servers',
        server.address,
        '--timeout',
        '10000',
        '--tls-ca',
        file('ca.pem'),
      ]).done;
      t.is(get.code, 0, get.stderr);
      // Neither a plain client nor a CA mistake is waited out: the command says why at once, not when its
      // 60 s timeout ends (the bound leaves room for starting node on a loaded machine, seconds).
      const plainLsStarted = Date.now();
      const plainLs = await runNode(segmemBin, ['ls', '--servers', server.address, '--timeout', '60000'], {
        timeoutMs: 120_000,
      }).done;
      t.is(plainLs.code, 1);
      t.regex(plainLs.stderr, /^segmem: 127\.0\.0\.1:\d+: .*requires TLS.*--tls-ca.* \(UNAVAILABLE\)\n$/);
      t.true(Date.now() - plainLsStarted < 30_000, `took ${Date.now() - plainLsStarted} ms`);
      const noCaStarted = Date.now();
      const noCa = await runNode(segmemBin, ['ls', '--servers', server.address, '--timeout', '60000'], {
        env: { SEGMEM_TLS_CA: file('client.pem') },
        timeoutMs: 120_000,
      }).done;
      t.is(noCa.code, 1);
      t.regex(noCa.stderr, /TLS handshake with 127\.0\.0\.1:\d+ failed/);
      t.true(Date.now() - noCaStarted < 30_000, `took ${Date.now() - noCaStarted} ms`);

      // The compat API: SEGMEM_SERVERS and SEGMEM_TLS_CA.
      const script = join(certs.path, 'compat-client.mjs');
      writeFileSync(
        script,
        `import * as c from ${JSON.stringify(compatUrl)};
await c.init_persistant();
await c.p_create(4, 'compat');
const b = await c.p_access_readwrite('compat');
b.writeUInt32LE(7, 0);
await c.p_release_readwrite(b);
await c.close_persistant();
`,
      );
      const compat = await runNode(script, [], {
        env: { SEGMEM_SERVERS: server.address, SEGMEM_TLS_CA: file('ca.pem') },
      }).done;
      t.is(compat.code, 0, compat.stderr);
      t.is(await seg.read('compat', (h) => h.bytes.readUInt32LE(0)), 7);
    } finally {
      await seg.close();
    }
  } finally {
    t.is(await server.stop(), 0);
    data.cleanup();
  }
});

/** The fingerprint of the certificate the server at `address` presents to a new TLS connection. */
async function presentedFingerprint(
  address: string,
  ca: Buffer,
  client: { cert?: Buffer; key?: Buffer } = {},
): Promise<string> {
  const at = address.lastIndexOf(':');
  const s = tlsConnect({ host: address.slice(0, at), port: Number(address.slice(at + 1)), ca, ...client });
  try {
    await new Promise<void>((resolve, reject) => {
      s.once('secureConnect', () => resolve());
      s.once('error', reject);
    });
    return s.getPeerCertificate().fingerprint256;
  } finally {
    s.destroy();
  }
}

test('SIGHUP renews the certificate for new connections, open ones keep working, and a bad file keeps the old one', async (t) => {
  const dir = tempDir('segmem-tls-renew-');
  const data = tempDir();
  const tlsDir = join(dir.path, 'tls');
  const fingerprintOf = () => new X509Certificate(readFileSync(join(tlsDir, 'server.pem'))).fingerprint256;
  try {
    const made = await runNode(segmemBin, ['cert', '--out', tlsDir, '--host', '127.0.0.1']).done;
    t.is(made.code, 0, made.stderr);
    const ca = readFileSync(join(tlsDir, 'ca.pem'));
    const server = await startServerProcess({
      dataDir: data.path,
      fsync: 'none',
      extra: [
        '--tls-cert',
        join(tlsDir, 'server.pem'),
        '--tls-key',
        join(tlsDir, 'server-key.pem'),
        '--tls-ca',
        join(tlsDir, 'ca.pem'),
        '--metrics',
        '127.0.0.1:0',
      ],
    });
    try {
      const metricsAt = /metrics on https:\/\/(\S+)\/metrics/.exec(server.stderr())![1]!;
      const first = fingerprintOf();
      t.is(await presentedFingerprint(server.address, ca), first);
      t.is(await presentedFingerprint(metricsAt, ca), first);
      const seg = await connect({ servers: [server.address], tls: { ca } });
      try {
        await seg.create('renew', 8);
        await bump(seg, 'renew');

        // Renewed by the same CA: a new certificate (new serial), then SIGHUP.
        const renewed = await runNode(segmemBin, ['cert', '--out', tlsDir, '--host', '127.0.0.1']).done;
        t.is(renewed.code, 0, renewed.stderr);
        const second = fingerprintOf();
        t.not(second, first, 'segmem cert made a new certificate');
        server.proc.kill('SIGHUP');
        await waitFor(() => /TLS files reloaded: .*serial /.test(server.stderr()), 'the reload line');
        t.is(await presentedFingerprint(server.address, ca), second, 'a new connection gets the new one');
        t.is(await presentedFingerprint(metricsAt, ca), second, 'so does the metrics endpoint');
        // The open session goes on over its connection, and new clients get in.
        await bump(seg, 'renew');
        t.is(await seg.read('renew', (h) => h.bytes.readUInt32LE(0)), 2);
        const again = await connect({ servers: [server.address], tls: { ca } });
        t.is(await again.read('renew', (h) => h.bytes.readUInt32LE(0)), 2);
        await again.close();

        // A broken certificate file: one line saying why, and the renewed certificate stays in use.
        writeFileSync(join(tlsDir, 'server.pem'), 'not a certificate\n');
        server.proc.kill('SIGHUP');
        await waitFor(() => /TLS files not reloaded/.test(server.stderr()), 'the refusal line');
        const refusal = server
          .stderr()
          .split('\n')
          .find((l) => l.includes('TLS files not reloaded'))!;
        t.regex(
          refusal,
          /^segmem-server s1: TLS files not reloaded, the previous certificate stays in use: the TLS certificate file .*server\.pem holds no PEM data \(INVALID_ARGUMENT\)$/,
        );
        t.is(await presentedFingerprint(server.address, ca), second);
        await bump(seg, 'renew');
        t.is(await seg.read('renew', (h) => h.bytes.readUInt32LE(0)), 3);
      } finally {
        await seg.close();
      }
    } finally {
      t.is(await server.stop(), 0, server.stderr());
    }
  } finally {
    data.cleanup();
    dir.cleanup();
  }
});

/** GET `url` (http or https, with `options`): the status and body, or the error it failed with. */
function httpGet(
  url: string,
  options: RequestOptions = {},
): Promise<{ status: number; body: string } | { error: string }> {
  const get = url.startsWith('https:') ? httpsGet : plainGet;
  return new Promise((resolve) => {
    const req = get(url, { ...options, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', (err) => resolve({ error: err.message }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err) => resolve({ error: err.message }));
  });
}

test('with TLS on, metrics and health are served over HTTPS with the same certificate, not in the clear', async (t) => {
  const data = tempDir();
  const server = await startServerProcess({
    dataDir: data.path,
    fsync: 'none',
    extra: [...serverTls(), '--tls-require-client-cert', '--metrics', '127.0.0.1:0'],
  });
  const ca = readFileSync(file('ca.pem'));
  const client = { cert: readFileSync(file('client.pem')), key: readFileSync(file('client-key.pem')) };
  try {
    const at = /metrics on https:\/\/(\S+)\/metrics/.exec(server.stderr());
    t.truthy(at, server.stderr());
    const address = at![1]!;
    const metrics = await httpGet(`https://${address}/metrics`, { ca, ...client });
    t.true('status' in metrics && metrics.status === 200, JSON.stringify(metrics).slice(0, 200));
    t.regex(
      (metrics as { body: string }).body,
      /segmem_connections_refused_total\{reason="tls_required"\} 0/,
    );
    const health = await httpGet(`https://${address}/health`, { ca, ...client });
    t.true('status' in health && health.status === 200, JSON.stringify(health));
    t.is(
      await presentedFingerprint(address, ca, client),
      new X509Certificate(readFileSync(file('server.pem'))).fingerprint256,
    );
    // In the clear: no answer.
    const plain = await httpGet(`http://${address}/metrics`);
    t.true('error' in plain, JSON.stringify(plain));
    // Without a client certificate, as on the listen port: refused.
    const anonymous = await httpGet(`https://${address}/metrics`, { ca });
    t.true('error' in anonymous, JSON.stringify(anonymous));
    // Without the CA: the certificate is not trusted.
    const untrusted = await httpGet(`https://${address}/metrics`, client);
    t.true('error' in untrusted, JSON.stringify(untrusted));
  } finally {
    t.is(await server.stop(), 0, server.stderr());
    data.cleanup();
  }
});

test('the handshake deadline and the connection limits hold for TLS connections', async (t) => {
  const data = tempDir();
  const server = await startServerProcess({
    dataDir: data.path,
    fsync: 'none',
    // Long enough for two TLS handshakes and a refusal on a loaded machine, short enough to wait out.
    extra: [...serverTls(), '--handshake-timeout-ms', '2000', '--max-connections-per-address', '2'],
  });
  const at = server.address.lastIndexOf(':');
  const host = server.address.slice(0, at);
  const port = Number(server.address.slice(at + 1));
  try {
    // A TCP connection that never starts the TLS handshake is closed at the deadline.
    const idle = netConnect({ host, port });
    idle.on('error', () => {});
    const started = Date.now();
    await new Promise<void>((r) => idle.once('close', () => r()));
    const waitedMs = Date.now() - started;
    t.true(waitedMs >= 1900 && waitedMs < 15_000, `closed at the deadline, after ${waitedMs} ms`);

    // Two TLS connections that do not log in, then a third: refused with an error frame, over TLS.
    const open = async () => {
      const s = tlsConnect({ host, port, ca: readFileSync(file('ca.pem')) });
      s.on('error', () => {});
      await new Promise<void>((resolve, reject) => {
        s.once('secureConnect', () => resolve());
        s.once('error', reject);
      });
      return s;
    };
    await untilItWorks(
      async () => {
        const held = [await open(), await open()];
        try {
          const third = await open();
          const decoder = new FrameDecoder();
          const frames: Frame[] = [];
          third.on('data', (c: Buffer) => frames.push(...decoder.push(c)));
          await waitFor(() => frames.length > 0, 'the refusal of the third connection', 3000);
          t.is(frames[0]!.type, MessageType.ERROR);
          const err = decodeError(frames[0]!);
          t.is(err.code, 'UNAVAILABLE');
          t.regex(err.message, /connections from .* are open/);
          third.destroy();
        } finally {
          for (const s of held) s.destroy();
        }
      },
      'two TLS connections held and a third refused',
      30_000,
    );
  } finally {
    t.is(await server.stop(), 0);
    data.cleanup();
  }
});

test('--tls-require-client-cert: only a client with a certificate of the CA gets in', async (t) => {
  const data = tempDir();
  const server = await startServerProcess({
    dataDir: data.path,
    fsync: 'none',
    extra: [...serverTls(), '--tls-require-client-cert'],
  });
  const ca = readFileSync(file('ca.pem'));
  try {
    const anonymous = await connect({ servers: [server.address], tls: { ca }, sessionTimeoutMs: 6000 }).catch(
      (e: unknown) => e,
    );
    t.true(SegmemError.is(anonymous, 'UNAVAILABLE'), String(anonymous));
    t.regex((anonymous as SegmemError).message, /certificate required/i);
    const seg = await connect({
      servers: [server.address],
      tls: { ca, cert: readFileSync(file('client.pem')), key: readFileSync(file('client-key.pem')) },
    });
    await seg.create('mtls', 4);
    t.is((await seg.stat('mtls')).size, 4);
    await seg.close();
    const cli = await runNode(segmemBin, [
      'stat',
      'mtls',
      '--servers',
      server.address,
      '--timeout',
      '10000',
      '--tls-ca',
      file('ca.pem'),
      '--tls-cert',
      file('client.pem'),
      '--tls-key',
      file('client-key.pem'),
    ]).done;
    t.is(cli.code, 0, cli.stderr);
  } finally {
    t.is(await server.stop(), 0);
    data.cleanup();
  }
});

test('a 3-member mutual-TLS cluster elects a leader, commits, and a client follows a failover over TLS', async (t) => {
  const root = tempDir();
  // Members must present a certificate of the CA to each other too.
  const cluster = await TestCluster.start(3, root.path, 'batch', () => [
    ...serverTls(),
    '--tls-require-client-cert',
  ]);
  const tls = {
    ca: readFileSync(file('ca.pem')),
    cert: readFileSync(file('client.pem')),
    key: readFileSync(file('client-key.pem')),
  };
  try {
    const seg = await connect({ servers: cluster.addresses, tls, sessionTimeoutMs: 3000 });
    try {
      await untilItWorks(
        () => seg.create('tls/cluster', 8, { ifNotExists: true }),
        'a leader to commit',
        20_000,
      );
      await bump(seg, 'tls/cluster', 5);

      // Large grants' pages come from followers, on page-reader connections of their own: TLS too.
      const size = 512 * 1024;
      await untilItWorks(() => seg.create('tls/big', size, { ifNotExists: true }), 'creating tls/big');
      const reader = await connect({ servers: cluster.addresses, tls, sessionTimeoutMs: 3000 });
      try {
        let round = 0;
        await waitFor(
          async () => {
            round++;
            await seg.update('tls/big', (h) => h.bytes.fill(round % 251));
            await reader.read('tls/big', (h) => t.true(h.bytes.every((b) => b === round % 251)));
            return (reader as unknown as { stats(): { pageReads: { fromFollowers: number } } }).stats()
              .pageReads.fromFollowers;
          },
          'a grant whose pages came from a follower over TLS',
          20_000,
        );
      } finally {
        await reader.close();
      }

      const leader = await waitFor(() => cluster.leader(), 'a leader');
      await cluster.kill(leader.id);
      await untilItWorks(() => bump(seg, 'tls/cluster'), 'a write after the failover', 20_000);
      t.is(await seg.read('tls/cluster', (h) => h.bytes.readUInt32LE(0)), 6);
      t.not(cluster.leader()?.id, leader.id);
    } finally {
      await seg.close();
    }
  } catch (err) {
    t.log(cluster.history());
    throw err;
  } finally {
    await cluster.stopAll();
    root.cleanup();
  }
});

test('the config file keys tlsCert, tlsKey and tlsCa turn TLS on; bad values are refused', async (t) => {
  const dir = tempDir();
  try {
    const config = join(dir.path, 'segmem.json');
    writeFileSync(
      config,
      JSON.stringify({ tlsCert: file('server.pem'), tlsKey: file('server-key.pem'), tlsCa: file('ca.pem') }),
    );
    const server = await startServerProcess({
      dataDir: join(dir.path, 'data'),
      fsync: 'none',
      extra: ['--config', config],
    });
    try {
      const seg = await connect({
        servers: [server.address],
        tls: { ca: readFileSync(file('ca.pem'), 'utf8') },
      });
      await seg.create('from-config', 4);
      await seg.close();
      const plain = await plainHello(server.address);
      await plain.closed;
      assertTlsRequired(t, plain);
    } finally {
      t.is(await server.stop(), 0);
    }
    writeFileSync(config, JSON.stringify({ tlsCert: file('server.pem'), tlsRequireClientCert: 'yes' }));
    const r = await runNode(serverBin, [
      '--id',
      's1',
      '--listen',
      '127.0.0.1:0',
      '--data',
      join(dir.path, 'd2'),
      '--config',
      config,
    ]).done;
    t.is(r.code, 1);
    // The config file's mistakes name the file, the line and the key.
    t.is(
      r.stderr,
      `segmem-server: ${config}:1: tlsRequireClientCert must be true or false (INVALID_ARGUMENT)\n`,
    );
  } finally {
    dir.cleanup();
  }
});

test('connect refuses a tls option of the wrong shape before dialling', async (t) => {
  for (const [tls, message] of [
    ['yes', /tls must be an object/],
    [{ ca: 42 }, /tls\.ca has the wrong type/],
    [{ cert: 'x' }, /tls\.cert and tls\.key go together/],
    [{ ciphers: 'x' }, /tls\.ciphers is not a TLS option/],
  ] as const) {
    const err = await connect({ servers: ['127.0.0.1:1'], tls: tls as never }).catch((e: unknown) => e);
    t.true(SegmemError.is(err, 'INVALID_ARGUMENT'), String(err));
    t.regex((err as Error).message, message);
  }
});

test('a member with a certificate of another CA is kept out of a mutual-TLS group, and both sides say why', async (t) => {
  const root = tempDir();
  const otherCa = join(root.path, 'other-ca');
  const made = await runNode(segmemBin, ['cert', '--out', otherCa, '--host', '127.0.0.1']).done;
  t.is(made.code, 0, made.stderr);
  const cluster = await TestCluster.start(3, root.path, 'batch', (id) =>
    id === 's3'
      ? [
          '--tls-cert',
          join(otherCa, 'server.pem'),
          '--tls-key',
          join(otherCa, 'server-key.pem'),
          '--tls-ca',
          join(otherCa, 'ca.pem'),
          '--tls-require-client-cert',
        ]
      : [...serverTls(), '--tls-require-client-cert'],
  );
  const tls = {
    ca: readFileSync(file('ca.pem')),
    cert: readFileSync(file('client.pem')),
    key: readFileSync(file('client-key.pem')),
  };
  try {
    // s1 and s2 are a majority: they elect and commit without s3.
    const seg = await connect({ servers: cluster.addresses.slice(0, 2), tls });
    await untilItWorks(
      () => seg.create('kept-out', 4, { ifNotExists: true }),
      'a commit by s1 and s2',
      20_000,
    );
    await seg.close();
    await waitFor(
      () => /TLS handshake with member s3 at \S+ failed: /.test(cluster.member('s1').server!.stderr()),
      's1 saying why it cannot reach s3',
    );
    await waitFor(
      () => /TLS handshake with member s1 at \S+ failed: /.test(cluster.member('s3').server!.stderr()),
      's3 saying why it cannot reach s1',
    );
    t.not(cluster.leader()?.id, 's3');
  } catch (err) {
    t.log(cluster.history());
    throw err;
  } finally {
    await cluster.stopAll();
    root.cleanup();
  }
});

test('bad certificate files stop the server with one line naming the file, before it listens', async (t) => {
  const dir = tempDir();
  try {
    const garbage = join(dir.path, 'garbage.pem');
    writeFileSync(garbage, 'not a certificate\n');
    const port = await freePort();
    const cases: [string[], RegExp][] = [
      [
        ['--tls-cert', join(dir.path, 'missing.pem'), '--tls-key', file('server-key.pem')],
        /missing\.pem: no such file/,
      ],
      [['--tls-cert', garbage, '--tls-key', file('server-key.pem')], /garbage\.pem holds no PEM data/],
      [
        ['--tls-cert', file('server-key.pem'), '--tls-key', file('server-key.pem')],
        /server-key\.pem holds no valid certificate/,
      ],
      [
        ['--tls-cert', file('server.pem'), '--tls-key', file('server.pem')],
        /server\.pem holds no valid private key/,
      ],
      [
        ['--tls-cert', file('server.pem'), '--tls-key', file('client-key.pem')],
        /client-key\.pem is not the key of the certificate in .*server\.pem/,
      ],
      [
        ['--tls-cert', file('server.pem'), '--tls-key', file('server-key.pem'), '--tls-require-client-cert'],
        /needs a CA file/,
      ],
      [['--tls-cert', file('server.pem')], /TLS needs both --tls-cert and --tls-key/],
    ];
    for (const [args, message] of cases) {
      const data = join(dir.path, 'data');
      const r = await runNode(serverBin, [
        '--id',
        's1',
        '--listen',
        `127.0.0.1:${port}`,
        '--data',
        data,
        ...args,
      ]).done;
      t.is(r.code, 1, args.join(' '));
      t.is(r.stdout, '', 'no ready line');
      t.regex(r.stderr.split('\n')[0]!, message);
      t.regex(r.stderr.split('\n')[0]!, /^segmem-server: .* \(INVALID_ARGUMENT\)$/);
      t.false(existsSync(data), 'the data directory was not even created');
    }
  } finally {
    dir.cleanup();
  }
});
