/**
 * loadServerTls: the checks a server runs on its certificate files at start, with certificates made by
 * `segmem cert`'s code (the system's openssl), including the ones a process test cannot reach cheaply (an
 * expired certificate, an encrypted key, a CA file that holds no certificate).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import test from 'ava';
import { createCertificates } from '../src/cli/cert-command.js';
import { loadServerTls } from '../src/tls-files.js';

const dir = mkdtempSync(join(tmpdir(), 'segmem-tls-files-'));
const file = (name: string) => join(dir, name);

test.before(() => {
  createCertificates(dir, ['IP:127.0.0.1'], 30);
});
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

function refused(t: import('ava').ExecutionContext, load: () => unknown, message: RegExp): void {
  const err = t.throws(load);
  t.true(SegmemError.is(err, 'INVALID_ARGUMENT'), String(err));
  t.regex((err as Error).message, message);
}

test('good files load, with the CA for members and client certificates', (t) => {
  const tls = loadServerTls(
    {
      certFile: file('server.pem'),
      keyFile: file('server-key.pem'),
      caFile: file('ca.pem'),
      requireClientCert: true,
    },
    Date.now(),
  );
  t.true(tls.requireClientCert);
  t.truthy(tls.peerOptions.ca);
  t.truthy(tls.peerOptions.cert);
});

test('a certificate past its end date is refused, naming the file and the date', (t) => {
  const in31Days = Date.now() + 31 * 86_400_000;
  refused(
    t,
    () => loadServerTls({ certFile: file('server.pem'), keyFile: file('server-key.pem') }, in31Days),
    /the TLS certificate in .*server\.pem expired on /,
  );
});

test('an encrypted key, a CA file of garbage, and a client-certificate demand without a CA are refused', (t) => {
  const encrypted = file('encrypted-key.pem');
  execFileSync('openssl', [
    'pkey',
    '-in',
    file('server-key.pem'),
    '-aes256',
    '-passout',
    'pass:secret',
    '-out',
    encrypted,
  ]);
  refused(
    t,
    () => loadServerTls({ certFile: file('server.pem'), keyFile: encrypted }, Date.now()),
    /the TLS key file .*encrypted-key\.pem holds no valid private key/,
  );
  const garbageCa = file('garbage-ca.pem');
  writeFileSync(garbageCa, '-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n');
  refused(
    t,
    () =>
      loadServerTls(
        { certFile: file('server.pem'), keyFile: file('server-key.pem'), caFile: garbageCa },
        Date.now(),
      ),
    /the TLS CA file .*garbage-ca\.pem holds no valid certificate/,
  );
  refused(
    t,
    () =>
      loadServerTls(
        { certFile: file('server.pem'), keyFile: file('server-key.pem'), requireClientCert: true },
        Date.now(),
      ),
    /needs a CA file/,
  );
});
