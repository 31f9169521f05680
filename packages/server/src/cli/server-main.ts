/**
 * segmem-server: runs one server in the foreground. Prints `segmem-server <id> ready on <host:port>`
 * once it serves; SIGTERM or SIGINT shut it down cleanly (exit 0).
 */
import { resolve } from 'node:path';
import { SegmemError } from '@segmem/protocol';
import {
  loadConfigFile,
  parseConsolidatedIntervalMs,
  parseConsolidatedKeep,
  parseNonNegativeInteger,
  parsePeers,
} from '../config.js';
import { startServer } from '../index.js';
import { parseArgs } from './args.js';

const USAGE = `usage: segmem-server --id ID --listen HOST:PORT --data DIR [--peers ID=HOST:PORT,...] [--fsync always|batch|none]
                     [--segment-bytes N] [--snapshot-every-entries N] [--snapshot-interval-ms MS]
                     [--consolidated-dir DIR [--consolidated-interval-ms MS] [--consolidated-keep N]]
                     [--repair] [--join --cluster-id ID] [--metrics HOST:PORT]
       segmem-server --config segmem.json --id ID [--data DIR] [--fsync ...]`;

export async function serverMain(argv: string[]): Promise<void> {
  let args: ReturnType<typeof parseArgs>;
  try {
    args = parseArgs(argv, {
      values: [
        'id',
        'listen',
        'peers',
        'data',
        'config',
        'fsync',
        'segment-bytes',
        'cluster-id',
        'snapshot-every-entries',
        'snapshot-interval-ms',
        'consolidated-dir',
        'consolidated-interval-ms',
        'consolidated-keep',
        'metrics',
      ],
      flags: ['repair', 'help', 'join'],
    });
  } catch (err) {
    fail(err);
    return;
  }
  if (args.flags.has('help')) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  try {
    const id = args.values.get('id');
    if (!id) throw new SegmemError('INVALID_ARGUMENT', '--id is required');
    const configPath = args.values.get('config');
    const config = configPath ? loadConfigFile(configPath) : undefined;
    const listen = args.values.get('listen') ?? config?.servers[id];
    if (!listen)
      throw new SegmemError(
        'INVALID_ARGUMENT',
        configPath ? `server "${id}" is not listed in ${configPath}` : '--listen is required',
      );
    const data = args.values.get('data') ?? config?.dataDir.replaceAll('{id}', id);
    if (!data) throw new SegmemError('INVALID_ARGUMENT', '--data is required');
    const peersArg = args.values.get('peers');
    const segmentBytes = args.values.get('segment-bytes');
    const fsync = args.values.get('fsync');
    const snapshotEvery = args.values.get('snapshot-every-entries');
    const snapshotInterval = args.values.get('snapshot-interval-ms');
    const server = await startServer({
      id,
      listen,
      dataDir: resolve(data),
      ...(configPath ? { config: configPath } : {}),
      ...(peersArg ? { peers: parsePeers(peersArg) } : {}),
      ...(fsync ? { fsync: fsync as never } : {}),
      ...(segmentBytes ? { segmentBytes: Number(segmentBytes) } : {}),
      ...(snapshotEvery !== undefined
        ? { snapshotEveryEntries: parseNonNegativeInteger('--snapshot-every-entries', snapshotEvery) }
        : {}),
      ...(snapshotInterval !== undefined
        ? { snapshotIntervalMs: parseNonNegativeInteger('--snapshot-interval-ms', snapshotInterval) }
        : {}),
      ...(args.values.get('consolidated-dir')
        ? { consolidatedDir: resolve(args.values.get('consolidated-dir')!) }
        : {}),
      ...(args.values.has('consolidated-interval-ms')
        ? {
            consolidatedIntervalMs: parseConsolidatedIntervalMs(args.values.get('consolidated-interval-ms')),
          }
        : {}),
      ...(args.values.has('consolidated-keep')
        ? { consolidatedKeep: parseConsolidatedKeep(args.values.get('consolidated-keep')) }
        : {}),
      ...(args.flags.has('repair') ? { repair: true } : {}),
      ...(args.flags.has('join') ? { join: true } : {}),
      ...(args.values.get('cluster-id') ? { clusterId: args.values.get('cluster-id')! } : {}),
      ...(args.values.has('metrics') ? { metrics: args.values.get('metrics')! } : {}),
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
          process.stderr.write(`segmem-server ${id}: shutdown failed: ${(err as Error).message}\n`);
          process.exit(1);
        },
      );
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
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

function fail(err: unknown): void {
  const message = SegmemError.is(err) ? `${err.message} (${err.code})` : String((err as Error)?.stack ?? err);
  process.stderr.write(
    `segmem-server: ${message}\n${SegmemError.is(err, 'INVALID_ARGUMENT') ? `${USAGE}\n` : ''}`,
  );
  process.exitCode = 1;
}
