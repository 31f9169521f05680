/** What the `segmem` subcommands share: the connection options, output helpers, and the command type. */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ConnectionOptions } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { PROTOCOL_VERSION, parseHostPort, SegmemError, validateUserName } from '@segmem/protocol';
import type { AdminOptions } from './admin-client.js';
import { type CommandSpec, type OptionSpec, type Parsed, parseCount, UsageError } from './args.js';

export interface Command extends CommandSpec {
  /** Runs the command; resolves with its exit code (0 when nothing is returned). */
  run(p: Parsed): Promise<number | undefined>;
}

/** The default of --timeout: how long a command tries to reach a leader, or waits for an answer. */
export const DEFAULT_TIMEOUT_MS = 2000;

export const SERVERS_OPTION: OptionSpec = {
  name: 'servers',
  value: 'HOST:PORT,...',
  list: true,
  help: 'addresses of members of the cluster; any will do, the leader is found from them',
  default: '$SEGMEM_SERVERS',
};
export const TIMEOUT_OPTION: OptionSpec = {
  name: 'timeout',
  value: 'MS',
  help: 'give up after MS milliseconds without reaching a leader (or a member), or without an answer',
  default: String(DEFAULT_TIMEOUT_MS),
};
export const TOKEN_OPTION: OptionSpec = {
  name: 'token',
  value: 'TOKEN',
  help: 'the credential the servers require: the token of their config file',
  default: '$SEGMEM_TOKEN',
};
export const USER_OPTION: OptionSpec = {
  name: 'user',
  value: 'NAME',
  help: 'log in as this user (see segmem user add); its password from --password-file or $SEGMEM_PASSWORD',
  default: '$SEGMEM_USER',
};
export const PASSWORD_FILE_OPTION: OptionSpec = {
  name: 'password-file',
  value: 'FILE',
  help: "the --user's password: FILE's first line (never give a password as an argument)",
  default: '$SEGMEM_PASSWORD',
};
export const TLS_CA_OPTION: OptionSpec = {
  name: 'tls-ca',
  value: 'FILE',
  help: "connect over TLS, trusting the servers' certificates signed by this CA (PEM)",
  default: '$SEGMEM_TLS_CA; none: plain TCP',
};
export const TLS_CERT_OPTION: OptionSpec = {
  name: 'tls-cert',
  value: 'FILE',
  help: 'connect over TLS with this client certificate (PEM), for servers that require one',
};
export const TLS_KEY_OPTION: OptionSpec = {
  name: 'tls-key',
  value: 'FILE',
  help: 'the key of --tls-cert (PEM)',
};
export const JSON_OPTION: OptionSpec = { name: 'json', help: 'print JSON for scripts instead of text' };

/** The options of every command that talks to a running cluster. */
export const CONNECTION_OPTIONS = [
  SERVERS_OPTION,
  TIMEOUT_OPTION,
  TOKEN_OPTION,
  USER_OPTION,
  PASSWORD_FILE_OPTION,
  TLS_CA_OPTION,
  TLS_CERT_OPTION,
  TLS_KEY_OPTION,
];

/**
 * --servers, --timeout and --token, or their environment variables; `given`: these servers instead of
 * --servers (one group of a config file's).
 */
export function connectionOf(p: Parsed, given?: string[]): AdminOptions {
  const servers =
    given ?? p.lists.get('servers') ?? (process.env.SEGMEM_SERVERS ?? '').split(',').filter(Boolean);
  if (servers.length === 0)
    throw new UsageError('--servers (or the SEGMEM_SERVERS environment variable) is required', null);
  for (const s of servers) hostPort(s, '--servers');
  const timeout = p.values.get('timeout');
  const token = p.values.get('token') ?? process.env.SEGMEM_TOKEN ?? null;
  return {
    servers,
    timeoutMs: timeout === undefined ? DEFAULT_TIMEOUT_MS : parseCount('--timeout', timeout, 1, 2 ** 31 - 1),
    token: token === '' ? null : token,
    login: loginOf(p),
    ...tlsOf(p),
  };
}

/** --tls-ca, --tls-cert, --tls-key (or $SEGMEM_TLS_CA) as tls.connect options; none: plain TCP. */
function tlsOf(p: Parsed): { tls?: ConnectionOptions } {
  const caFile = p.values.get('tls-ca') ?? (process.env.SEGMEM_TLS_CA || undefined);
  const certFile = p.values.get('tls-cert');
  const keyFile = p.values.get('tls-key');
  if ((certFile === undefined) !== (keyFile === undefined))
    throw new UsageError('--tls-cert and --tls-key go together', null);
  if (caFile === undefined && certFile === undefined) return {};
  const read = (file: string, option: string) => {
    try {
      return readFileSync(file);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `cannot read ${option} ${file}: ${e.code === 'ENOENT' ? 'no such file' : e.message}`,
      );
    }
  };
  return {
    tls: {
      ...(caFile !== undefined ? { ca: read(caFile, '--tls-ca') } : {}),
      ...(certFile !== undefined
        ? { cert: read(certFile, '--tls-cert'), key: read(keyFile!, '--tls-key') }
        : {}),
    },
  };
}

/** --user and its password (--password-file, else $SEGMEM_PASSWORD), or null without a user. */
function loginOf(p: Parsed): { user: string; password: string } | null {
  const user = p.values.get('user') ?? (process.env.SEGMEM_USER || undefined);
  const file = p.values.get('password-file');
  if (user === undefined) {
    if (file !== undefined) throw new UsageError('--password-file needs --user NAME (or SEGMEM_USER)', null);
    return null;
  }
  try {
    validateUserName(user, '--user');
  } catch (err) {
    throw new UsageError((err as Error).message, null);
  }
  const password =
    file !== undefined ? readPasswordFile(file, '--password-file') : process.env.SEGMEM_PASSWORD;
  if (password === undefined || password === '')
    throw new UsageError('--user needs its password: --password-file FILE or SEGMEM_PASSWORD', null);
  return { user, password };
}

/** A password from a file: its first line, without the line end. */
export function readPasswordFile(file: string, what: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `${what}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
  return firstLine(text);
}

/** The first line of `text`, without its \n or \r\n. */
export function firstLine(text: string): string {
  const end = text.indexOf('\n');
  const line = end < 0 ? text : text.slice(0, end);
  return line.endsWith('\r') ? line.slice(0, -1) : line;
}

/** `value` if it is host:port, else a usage mistake naming `what`. */
export function hostPort(value: string, what: string): string {
  try {
    parseHostPort(value, what);
  } catch (err) {
    throw new UsageError((err as Error).message, null);
  }
  return value;
}

/** Writes `text` to stdout, waiting for the pipe to drain (large outputs, slow readers). */
export async function out(text: string | Uint8Array): Promise<void> {
  if (!process.stdout.write(text)) await new Promise((r) => process.stdout.once('drain', r));
}

export function json(value: unknown): Promise<void> {
  return out(`${JSON.stringify(value)}\n`);
}

/** `1.5 MiB`, `512 B`. */
/** `1 object`, `3 objects`. */
export function counted(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

/** Rows as aligned columns (two spaces apart), the last column unpadded. */
export function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, cell.length);
    });
  }
  return rows
    .map((row) =>
      row
        .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd(),
    )
    .map((line) => `${line}\n`)
    .join('');
}

/** Whether a line of text must not carry this UTF-16 unit raw: C0 and C1 controls, DEL, bidi controls. */
function unprintable(code: number): boolean {
  return (
    code <= 0x1f ||
    (code >= 0x7f && code <= 0x9f) ||
    code === 0x061c ||
    code === 0x200e ||
    code === 0x200f ||
    (code >= 0x202a && code <= 0x202e) ||
    (code >= 0x2066 && code <= 0x2069)
  );
}

/**
 * A name or record for one line of text: `\` as `\\`, newline, carriage return and tab as `\n`, `\r`, `\t`,
 * other control characters as `\xNN`, and bidi controls (which could reorder what a terminal shows) as
 * `\u{NNNN}`; everything else as it is.
 */
export function escapeText(s: string): string {
  let out = '';
  let from = 0;
  for (let i = 0; i < s.length; i++) {
    const code = s.charCodeAt(i);
    if (code !== 0x5c && !unprintable(code)) continue;
    out += s.slice(from, i);
    from = i + 1;
    if (code === 0x5c) out += '\\\\';
    else if (code === 0x0a) out += '\\n';
    else if (code === 0x0d) out += '\\r';
    else if (code === 0x09) out += '\\t';
    else if (code <= 0xff) out += `\\x${code.toString(16).padStart(2, '0')}`;
    else out += `\\u{${code.toString(16).toUpperCase()}}`;
  }
  return from === 0 ? s : out + s.slice(from);
}

/** Progress lines go to stderr, and only on a terminal (never into a script's captured output). */
export function progress(text: string, done = false): void {
  if (!process.stderr.isTTY) return;
  process.stderr.write(`\r${text}\x1b[K${done ? '\n' : ''}`);
}

/** An error from the servers, with what the CLI knows about a retried request added. */
export function explain(err: unknown, what: string): unknown {
  if (SegmemError.is(err) && err.details?.retried === true) {
    return new SegmemError(
      err.code,
      `${err.message} (the connection was lost once while ${what}: an earlier attempt may have done it)`,
      err.details,
    );
  }
  return err;
}

/** The version of @segmem/server this command comes from, and the protocol it speaks. */
export function versionLine(program: string): string {
  const pkg = join(dirname(fileURLToPath(import.meta.url)), '../../../package.json');
  const version = (JSON.parse(readFileSync(pkg, 'utf8')) as { version: string }).version;
  return `${program} ${version} (protocol ${PROTOCOL_VERSION})\n`;
}

/** One line: the message and code of a SegmemError, the message (and errno code) of anything else. */
export function describe(err: unknown): string {
  if (SegmemError.is(err)) return `${oneLine(err.message)} (${err.code})`;
  const e = err as NodeJS.ErrnoException;
  return `${oneLine(e?.message ?? String(err))} (${e?.code ?? 'INTERNAL'})`;
}

/** The message on one line: its line breaks written as \n. */
function oneLine(s: string): string {
  return s.replace(/\r?\n/g, '\\n');
}
