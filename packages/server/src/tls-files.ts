/**
 * The server's TLS files: the certificate and key (and the CA that client certificates, and other members'
 * certificates, must chain to), read and checked at start, so that a bad file stops the server with one
 * line naming it before anything listens, and again on a reload (SIGHUP), which keeps the material in use
 * when the new files do not check out. (Outside shell/: a cluster member's modules read no files.)
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureContext } from 'node:tls';
import { SegmemError } from '@segmem/protocol';
import type { ServerTls } from './shell/tls.js';

/** Where the server's TLS material is: PEM files. */
export interface TlsFiles {
  /** The server's certificate (PEM; may be followed by intermediate certificates). */
  certFile: string;
  /** The certificate's private key (PEM, unencrypted). */
  keyFile: string;
  /** CA certificates (PEM) that client certificates and other members' certificates must chain to. */
  caFile?: string;
  /** Refuse clients that present no certificate signed by `caFile`'s CA (mutual TLS). */
  requireClientCert?: boolean;
}

function bad(message: string): SegmemError {
  return new SegmemError('INVALID_ARGUMENT', message);
}

function readPem(path: string, what: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.message;
    throw bad(`cannot read the TLS ${what} file ${path}: ${why}`);
  }
  if (!text.includes('-----BEGIN ')) throw bad(`the TLS ${what} file ${path} holds no PEM data`);
  return text;
}

/** The reason OpenSSL gives, without its error-stack prefix (`error:0480006C:PEM routines::`). */
function reason(err: unknown): string {
  const message = (err as Error)?.message ?? String(err);
  return message.replace(/^error:[0-9A-F]+:[^:]*:[^:]*:/, '');
}

/**
 * Reads and checks the files; throws INVALID_ARGUMENT naming the file and what is wrong with it. `nowMs`:
 * the wall-clock time the certificate's end date is checked against.
 */
export function loadServerTls(files: TlsFiles, nowMs: number): ServerTls {
  const certPem = readPem(files.certFile, 'certificate');
  const keyPem = readPem(files.keyFile, 'key');
  const caPem = files.caFile !== undefined ? readPem(files.caFile, 'CA') : undefined;
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch (err) {
    throw bad(`the TLS certificate file ${files.certFile} holds no valid certificate: ${reason(err)}`);
  }
  let key: ReturnType<typeof createPrivateKey>;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw bad(`the TLS key file ${files.keyFile} holds no valid private key: ${reason(err)}`);
  }
  if (!cert.checkPrivateKey(key))
    throw bad(`the TLS key file ${files.keyFile} is not the key of the certificate in ${files.certFile}`);
  if (Date.parse(cert.validTo) < nowMs)
    throw bad(`the TLS certificate in ${files.certFile} expired on ${cert.validTo}`);
  if (caPem !== undefined) {
    try {
      new X509Certificate(caPem);
    } catch (err) {
      throw bad(`the TLS CA file ${files.caFile} holds no valid certificate: ${reason(err)}`);
    }
  }
  if (files.requireClientCert && caPem === undefined)
    throw bad('requiring client certificates needs a CA file to check them against (--tls-ca)');
  let context: SecureContext;
  try {
    context = createSecureContext({ cert: certPem, key: keyPem, ...(caPem ? { ca: caPem } : {}) });
  } catch (err) {
    throw bad(`cannot use the TLS files ${files.certFile} and ${files.keyFile}: ${reason(err)}`);
  }
  return {
    context,
    requireClientCert: files.requireClientCert === true,
    peerOptions: { cert: certPem, key: keyPem, ...(caPem ? { ca: caPem } : {}) },
    certificate: {
      serialNumber: cert.serialNumber,
      validTo: cert.validTo,
      fingerprint256: cert.fingerprint256,
    },
  };
}

/**
 * Reads and checks the files again, exactly as at start, and puts the new material in `tls` for the
 * connections made from now on (open ones keep theirs). Throws as {@link loadServerTls} does, `tls` left
 * as it was.
 */
export function reloadServerTls(tls: ServerTls, files: TlsFiles, nowMs: number): void {
  const fresh = loadServerTls(files, nowMs);
  tls.context = fresh.context;
  tls.certificate = fresh.certificate;
  // Peer links hold this very object (they spread it at each dial): its contents are replaced.
  const peer = tls.peerOptions as Record<string, unknown>;
  for (const key of Object.keys(peer)) delete peer[key];
  Object.assign(peer, fresh.peerOptions);
}
