/**
 * `segmem cert`: a local CA and certificates signed by it, for TLS on the servers' port. Node has no API
 * to create X.509 certificates, so this runs the system's `openssl` program, with a config file of its own
 * (nothing from the system's openssl.cnf), the same commands docs/operations.md lists.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import { parseCount, UsageError } from './args.js';
import { type Command, out } from './common.js';

/** Validity of a new CA, and of the certificates it signs unless --days says otherwise. */
const CA_DAYS = 3650;
const DEFAULT_CERT_DAYS = 825;

export const cert: Command = {
  name: 'cert',
  args: [],
  summary: 'create a local CA and a server (and client) certificate for TLS, with openssl',
  description: `Writes into DIR a certificate authority (ca.pem, ca-key.pem), unless DIR holds one
    already (then it signs with that one), and a certificate for the servers (server.pem, server-key.pem)
    valid for every --host given (IP addresses and DNS names), usable by members to dial each other too;
    and a client certificate (client.pem, client-key.pem) for servers started with
    --tls-require-client-cert. Keys are written with mode 0600. Start servers with --tls-cert
    DIR/server.pem --tls-key DIR/server-key.pem --tls-ca DIR/ca.pem, and give clients DIR/ca.pem
    (connect({ tls: { ca } }), or --tls-ca for segmem commands). Needs the openssl program: Node cannot
    create certificates itself.`,
  options: [
    { name: 'out', value: 'DIR', help: 'directory to write the files into, created if missing (required)' },
    {
      name: 'host',
      value: 'HOST',
      list: true,
      help: 'an IP address or DNS name the servers are reached at; repeat or comma-separate (required)',
    },
    {
      name: 'days',
      value: 'N',
      help: 'how long the server and client certificates are valid',
      default: String(DEFAULT_CERT_DAYS),
    },
  ],
  async run(p) {
    const dir = p.values.get('out');
    if (!dir) throw new UsageError('--out DIR is required', null);
    const hosts = p.lists.get('host') ?? [];
    if (hosts.length === 0)
      throw new UsageError('give at least one --host (an IP address or DNS name)', null);
    const names = hosts.map((h) => {
      if (isIP(h)) return `IP:${h}`;
      if (
        /^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/.test(h)
      )
        return `DNS:${h}`;
      throw new UsageError(`--host ${JSON.stringify(h)} is neither an IP address nor a DNS name`, null);
    });
    const days = p.values.has('days')
      ? parseCount('--days', p.values.get('days')!, 1, 36500)
      : DEFAULT_CERT_DAYS;
    const written = createCertificates(resolve(dir), names, days);
    await out(written.map((line) => `${line}\n`).join(''));
    return 0;
  },
};

/** The openssl config: no defaults from the system's file, the extensions each certificate gets. */
function opensslConfig(subjectAltNames: string[]): string {
  return `[req]
distinguished_name = dn
prompt = no
[dn]
CN = segmem
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = ${subjectAltNames.join(',')}
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
`;
}

function openssl(args: string[]): void {
  try {
    execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: Buffer };
    if (e.code === 'ENOENT')
      throw new SegmemError(
        'UNAVAILABLE',
        'segmem cert needs the openssl program on PATH (Node cannot create certificates itself); install openssl or run the commands in docs/operations.md elsewhere',
      );
    const why = e.stderr?.toString('utf8').trim().split('\n')[0] ?? e.message;
    throw new SegmemError('UNAVAILABLE', `openssl ${args[0]} failed: ${why}`);
  }
}

/** An empty file of mode 0600 that openssl then writes the key into (it keeps the mode). */
function privateFile(path: string): string {
  closeSync(openSync(path, 'w', 0o600));
  chmodSync(path, 0o600);
  return path;
}

/** A private key (EC P-256) and a certificate signed by the CA (or self-signed for the CA itself). */
function issue(
  dir: string,
  work: string,
  config: string,
  name: 'ca' | 'server' | 'client',
  days: number,
): void {
  const key = privateFile(join(dir, `${name}-key.pem`));
  const certFile = join(dir, `${name}.pem`);
  const common = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key];
  const subject = ['-subj', `/CN=segmem ${name === 'ca' ? 'local CA' : name}`, '-config', config];
  if (name === 'ca') {
    openssl([
      'req',
      '-x509',
      ...common,
      ...subject,
      '-extensions',
      'ca',
      '-days',
      String(days),
      '-out',
      certFile,
    ]);
    return;
  }
  const csr = join(work, `${name}.csr`);
  openssl(['req', '-new', ...common, ...subject, '-out', csr]);
  openssl([
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    join(dir, 'ca.pem'),
    '-CAkey',
    join(dir, 'ca-key.pem'),
    '-set_serial',
    `0x${randomBytes(16).toString('hex')}`,
    '-days',
    String(days),
    '-extfile',
    config,
    '-extensions',
    name,
    '-out',
    certFile,
  ]);
}

/** Writes the files; returns one line per file written, saying what it is for. */
export function createCertificates(dir: string, subjectAltNames: string[], days: number): string[] {
  mkdirSync(dir, { recursive: true });
  const work = mkdtempSync(join(dir, '.segmem-cert-'));
  try {
    const config = join(work, 'openssl.cnf');
    writeFileSync(config, opensslConfig(subjectAltNames));
    const lines: string[] = [];
    const haveCa = existsSync(join(dir, 'ca.pem')) && existsSync(join(dir, 'ca-key.pem'));
    // A CA certificate without its key: replacing it would strand every certificate it signed.
    if (!haveCa && existsSync(join(dir, 'ca.pem')))
      throw new SegmemError(
        'ALREADY_EXISTS',
        `${join(dir, 'ca.pem')} exists without ca-key.pem beside it: put its key there to sign with it, or use another --out`,
      );
    if (haveCa) lines.push(`using the CA in ${join(dir, 'ca.pem')}`);
    else {
      issue(dir, work, config, 'ca', CA_DAYS);
      lines.push(
        `${join(dir, 'ca.pem')}: the CA certificate (clients: tls.ca or --tls-ca; servers: --tls-ca)`,
      );
      lines.push(`${join(dir, 'ca-key.pem')}: the CA's key (mode 0600; keep it off the servers)`);
    }
    issue(dir, work, config, 'server', days);
    lines.push(
      `${join(dir, 'server.pem')}: the servers' certificate for ${subjectAltNames.join(', ')} (--tls-cert)`,
    );
    lines.push(`${join(dir, 'server-key.pem')}: its key (mode 0600; --tls-key)`);
    issue(dir, work, config, 'client', days);
    lines.push(
      `${join(dir, 'client.pem')}: a client certificate (tls.cert or --tls-cert, with --tls-require-client-cert)`,
    );
    lines.push(`${join(dir, 'client-key.pem')}: its key (mode 0600; tls.key or --tls-key)`);
    return lines;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
