/**
 * segmem-server: runs one server in the foreground. Prints `segmem-server <id> ready on <host:port>`
 * once it serves; SIGTERM or SIGINT shut it down cleanly (exit 0). A failure to start is one line on
 * stderr, `segmem-server: <message> (<CODE>)`, and exit code 1; a usage mistake adds the usage line.
 */
import { resolve } from 'node:path';
import {
  DEFAULT_CONFIG,
  groupOf,
  loadConfigFile,
  parseConsolidatedIntervalMs,
  parseConsolidatedKeep,
  parseMaxMemory,
  parseNonNegativeInteger,
  parsePeers,
  type ServerConfig,
} from '../config.js';
import {
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
  type StartServerOptions,
  startServer,
  type TlsFiles,
} from '../index.js';
import { MIN_MAX_MEMORY_BYTES } from '../node/budget.js';
import { type CommandSpec, helpText, parseCommand, synopsis, UsageError } from './args.js';
import { describe, versionLine } from './common.js';

/** Every option of segmem-server; docs/operations.md has the same table (a test compares them). */
export const SERVER_COMMAND: CommandSpec = {
  name: 'segmem-server',
  args: [],
  summary: 'run one segmem server in the foreground',
  description: `Runs one server in the foreground: segmem-server --id ID --listen HOST:PORT --data DIR
    [--peers ...], or segmem-server --config FILE --id ID with the rest in the config file (options given
    override it); with shard groups in the file, ID's group gives its peers and its range of the segment. Prints "segmem-server ID ready on HOST:PORT" on stdout once it serves, recovery reports and
    warnings on stderr. SIGTERM or SIGINT stop it cleanly (exit 0); SIGUSR2 prints a status line on stderr.
    A failure to start prints "segmem-server: <message> (<CODE>)" and exits 1.`,
  options: [
    { name: 'id', value: 'ID', help: 'server id, 1..64 characters of [A-Za-z0-9._-] (required)' },
    {
      name: 'listen',
      value: 'HOST:PORT',
      help: 'TCP (and UDP) address to listen on; port 0 picks a free one',
      default: "the config file's servers[ID] (or its group's members[ID])",
    },
    {
      name: 'data',
      value: 'DIR',
      help: 'data directory, created if missing',
      default: "the config file's dataDir",
    },
    {
      name: 'peers',
      value: 'ID=HOST:PORT,...',
      help: 'every member of the group, this server included: makes it a member of a replicated group',
      default: "the config file's servers, or its group's members; none: one server",
    },
    {
      name: 'fsync',
      value: 'always|batch|none',
      choices: ['always', 'batch', 'none'],
      help: 'WAL durability policy',
      default: 'batch',
    },
    { name: 'config', value: 'FILE', help: 'JSON config file (see docs/operations.md)' },
    {
      name: 'segment-bytes',
      value: 'N',
      help: 'segment size for a new data directory: a multiple of 4096, 4096..2^46',
      default: String(DEFAULT_CONFIG.segmentBytes),
    },
    {
      name: 'cluster-id',
      value: 'ID',
      help: 'the cluster id a new data directory gets, or an existing one must have',
      default: 'derived from the cluster secret, or random for one server',
    },
    {
      name: 'cluster-secret-file',
      value: 'FILE',
      help: 'the secret members prove to each other (segmem secret new FILE); required with --peers',
      default: "the config file's clusterSecretFile",
    },
    {
      name: 'rotate-cluster-secret',
      help: 'accept a cluster secret other than the one this data directory was started with (after replacing it on every member)',
    },
    { name: 'join', help: 'start as a server waiting to be added to an existing group (segmem cluster add)' },
    {
      name: 'snapshot-every-entries',
      value: 'N',
      help: 'snapshot the state every N log entries and cut the WAL; 0: never by count',
      default: String(DEFAULT_CONFIG.snapshotEveryEntries),
    },
    {
      name: 'snapshot-interval-ms',
      value: 'MS',
      help: 'one server: also snapshot every MS ms if anything changed; 0: never by time',
      default: String(DEFAULT_CONFIG.snapshotIntervalMs),
    },
    {
      name: 'consolidated-dir',
      value: 'DIR',
      help: 'the leader writes consolidated snapshots into DIR on a schedule',
      default: 'off',
    },
    {
      name: 'consolidated-interval-ms',
      value: 'MS',
      help: 'how often, at least 1000',
      default: String(DEFAULT_CONFIG.consolidatedIntervalMs),
    },
    {
      name: 'consolidated-keep',
      value: 'N',
      help: 'how many of those files to keep, the newest; at least 1',
      default: String(DEFAULT_CONFIG.consolidatedKeep),
    },
    {
      name: 'repair',
      help: 'one server: start even if the WAL is corrupt, truncating it at the first bad record; a cluster member also where healing by itself is not safe',
    },
    {
      name: 'metrics',
      value: 'HOST:PORT',
      help: 'serve Prometheus metrics at /metrics and a health check at /health on this address (HTTPS with TLS on)',
      default: "off, or the config file's metrics",
    },
    {
      name: 'handshake-timeout-ms',
      value: 'MS',
      help: 'close a connection that has not logged in (HELLO) within MS ms; 0: never',
      default: String(DEFAULT_HANDSHAKE_TIMEOUT_MS),
    },
    {
      name: 'max-memory',
      value: 'SIZE',
      help: 'memory budget (512MiB, 2GiB, or bytes; off: none): creating objects and appending past it is refused (NO_SPACE), snapshot exports (UNAVAILABLE)',
      default: "the config file's maxMemory, or 3/4 of the cgroup or machine memory",
    },
    {
      name: 'max-connections',
      value: 'N',
      help: 'connections open at once (clients and other members); one more is refused',
      default: String(DEFAULT_MAX_CONNECTIONS),
    },
    {
      name: 'max-connections-per-address',
      value: 'N',
      help: 'connections open at once from one remote address; one more is refused',
      default: String(DEFAULT_MAX_CONNECTIONS_PER_ADDRESS),
    },
    {
      name: 'tls-cert',
      value: 'FILE',
      help: 'serve TLS only, with this certificate (PEM); members then dial each other over TLS',
      default: "off, or the config file's tlsCert",
    },
    { name: 'tls-key', value: 'FILE', help: 'the private key of --tls-cert (PEM)' },
    {
      name: 'tls-ca',
      value: 'FILE',
      help: "CA certificates (PEM) that members' and client certificates must chain to",
      default: 'the system roots',
    },
    {
      name: 'tls-require-client-cert',
      help: 'refuse clients without a certificate signed by --tls-ca (mutual TLS)',
    },
  ],
};

export async function serverMain(argv: string[]): Promise<void> {
  let opts: StartServerOptions;
  try {
    const p = parseCommand(SERVER_COMMAND, argv);
    if (p.help) return void process.stdout.write(helpText(SERVER_COMMAND));
    if (p.version) return void process.stdout.write(versionLine('segmem-server'));
    opts = serverOptions(p.values, p.flags);
  } catch (err) {
    fail(err);
    return;
  }
  const id = opts.id;
  try {
    const server = await startServer({
      ...opts,
      log: (line) => process.stderr.write(`segmem-server ${id}: ${line}\n`),
    });
    // Signal handlers first: a signal that arrives right after the ready line must find them.
    let stopping = false;
    const stop = () => {
      if (stopping) return;
      stopping = true;
      server.close().then(
        () => process.exit(0),
        (err) => {
          process.stderr.write(`segmem-server ${id}: shutdown failed: ${describe(err)}\n`);
          process.exit(1);
        },
      );
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    // SIGHUP renews the TLS certificate (as nginx does); without TLS it keeps its default (the process ends).
    if (server.servesTls) {
      process.on('SIGHUP', () => {
        try {
          const cert = server.reloadTls();
          process.stderr.write(
            `segmem-server ${id}: TLS files reloaded: new connections get the certificate with serial ${cert.serialNumber}, valid until ${cert.validTo}\n`,
          );
        } catch (err) {
          process.stderr.write(
            `segmem-server ${id}: TLS files not reloaded, the previous certificate stays in use: ${describe(err)}\n`,
          );
        }
      });
    }
    // SIGUSR2 prints where this member stands (tests compare replicas with it).
    process.on('SIGUSR2', () => {
      const s = server.status();
      process.stderr.write(
        `segmem-server ${id}: status leader=${s.leader} applied=${s.applied} digest=${s.digest} sessions=${s.sessions} objects=${s.objects} logs=${s.logs} pagesServed=${s.pagesServed}\n`,
      );
    });
    process.stdout.write(`segmem-server ${id} ready on ${server.address}\n`);
  } catch (err) {
    fail(err);
  }
}

/** The command line as startServer options: a missing required value is a usage mistake. */
function serverOptions(values: Map<string, string>, flags: Set<string>): StartServerOptions {
  const usage = (message: string) => new UsageError(message, SERVER_COMMAND);
  const id = values.get('id');
  if (!id) throw usage('--id is required');
  const configPath = values.get('config');
  const config = configPath ? loadConfigFile(configPath) : undefined;
  // A grouped config: an id in no group is refused here, in one line (not as a usage mistake).
  if (configPath && config?.groups) groupOf(config, id, configPath);
  const listen = values.get('listen') ?? config?.servers[id];
  if (!listen)
    throw usage(configPath ? `server "${id}" is not listed in ${configPath}` : '--listen is required');
  const data = values.get('data') ?? config?.dataDir.replaceAll('{id}', id);
  if (!data) throw usage('--data is required');
  const number = (name: string, parse: (v: string) => number) =>
    values.has(name) ? parse(values.get(name)!) : undefined;
  const segmentBytes = number('segment-bytes', Number);
  const snapshotEveryEntries = number('snapshot-every-entries', (v) =>
    parseNonNegativeInteger('--snapshot-every-entries', v),
  );
  const snapshotIntervalMs = number('snapshot-interval-ms', (v) =>
    parseNonNegativeInteger('--snapshot-interval-ms', v),
  );
  const consolidatedIntervalMs = number('consolidated-interval-ms', parseConsolidatedIntervalMs);
  const consolidatedKeep = number('consolidated-keep', parseConsolidatedKeep);
  const handshakeTimeoutMs = number('handshake-timeout-ms', (v) =>
    parseNonNegativeInteger('--handshake-timeout-ms', v),
  );
  const maxConnections = number('max-connections', (v) => parseNonNegativeInteger('--max-connections', v));
  const maxConnectionsPerAddress = number('max-connections-per-address', (v) =>
    parseNonNegativeInteger('--max-connections-per-address', v),
  );
  const peers = values.get('peers');
  const maxMemory = values.has('max-memory')
    ? parseMaxMemory('--max-memory', values.get('max-memory')!, MIN_MAX_MEMORY_BYTES)
    : undefined;
  const tls = tlsOptions(values, flags, config);
  return {
    id,
    listen,
    dataDir: resolve(data),
    ...(configPath ? { config: configPath } : {}),
    ...(peers ? { peers: parsePeers(peers) } : {}),
    ...(values.has('fsync') ? { fsync: values.get('fsync') as 'always' | 'batch' | 'none' } : {}),
    ...(segmentBytes !== undefined ? { segmentBytes } : {}),
    ...(snapshotEveryEntries !== undefined ? { snapshotEveryEntries } : {}),
    ...(snapshotIntervalMs !== undefined ? { snapshotIntervalMs } : {}),
    ...(values.has('consolidated-dir') ? { consolidatedDir: resolve(values.get('consolidated-dir')!) } : {}),
    ...(consolidatedIntervalMs !== undefined ? { consolidatedIntervalMs } : {}),
    ...(consolidatedKeep !== undefined ? { consolidatedKeep } : {}),
    ...(flags.has('repair') ? { repair: true } : {}),
    ...(flags.has('join') ? { join: true } : {}),
    ...(flags.has('rotate-cluster-secret') ? { rotateClusterSecret: true } : {}),
    ...(values.has('cluster-id') ? { clusterId: values.get('cluster-id')! } : {}),
    ...(values.has('cluster-secret-file')
      ? { clusterSecretFile: resolve(values.get('cluster-secret-file')!) }
      : {}),
    ...(values.has('metrics') ? { metrics: values.get('metrics')! } : {}),
    ...(handshakeTimeoutMs !== undefined ? { handshakeTimeoutMs } : {}),
    ...(maxConnections !== undefined ? { maxConnections } : {}),
    ...(maxConnectionsPerAddress !== undefined ? { maxConnectionsPerAddress } : {}),
    ...(maxMemory !== undefined ? { maxMemory } : {}),
    ...(tls ? { tls } : {}),
  };
}

/** The --tls-* options over the config file's; none given: the config file's alone (startServer reads it). */
function tlsOptions(
  values: Map<string, string>,
  flags: Set<string>,
  config: ServerConfig | undefined,
): TlsFiles | undefined {
  const given =
    ['tls-cert', 'tls-key', 'tls-ca'].some((o) => values.has(o)) || flags.has('tls-require-client-cert');
  if (!given) return undefined;
  const certFile = values.get('tls-cert') ?? config?.tlsCert;
  const keyFile = values.get('tls-key') ?? config?.tlsKey;
  if (!certFile || !keyFile)
    throw new UsageError(
      'TLS needs both --tls-cert and --tls-key (or tlsCert and tlsKey in the config file)',
      SERVER_COMMAND,
    );
  const caFile = values.get('tls-ca') ?? config?.tlsCa;
  return {
    certFile: resolve(certFile),
    keyFile: resolve(keyFile),
    ...(caFile ? { caFile: resolve(caFile) } : {}),
    ...(flags.has('tls-require-client-cert') || config?.tlsRequireClientCert
      ? { requireClientCert: true }
      : {}),
  };
}

function fail(err: unknown): void {
  const usage =
    err instanceof UsageError ? `usage: ${synopsis(SERVER_COMMAND)}\n(segmem-server --help for more)\n` : '';
  process.stderr.write(`segmem-server: ${describe(err)}\n${usage}`);
  if (process.env.SEGMEM_DEBUG && !(err instanceof UsageError))
    process.stderr.write(`${(err as Error)?.stack ?? ''}\n`);
  process.exitCode = 1;
}
