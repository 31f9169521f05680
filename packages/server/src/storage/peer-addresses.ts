/**
 * The addresses of the group's members as this member learned them (`peers.json` in the data directory).
 * A member added with `segmem cluster add` is known by the address its `add` entry carries; once a
 * snapshot has compacted that entry away, only this file remembers it, so a restart with the original
 * `--peers` list can still reach every member. The file is advisory: the command line's `--peers` wins
 * for an id it names, and a damaged file is reported and ignored.
 *
 * @module
 */
import { join } from 'node:path';
import { errnoCode, errorMessage } from './files.js';
import { nodeFs, type StorageFs, writeFileAtomic } from './fs.js';

export const PEERS_FILE = 'peers.json';

const SERVER_ID = /^[A-Za-z0-9._-]{1,64}$/;

/** The saved addresses (empty without a file); `warn` hears why a damaged file was ignored. */
export async function loadPeerAddresses(
  dir: string,
  warn?: (line: string) => void,
  fs: StorageFs = nodeFs,
): Promise<Record<string, string>> {
  const path = join(dir, PEERS_FILE);
  let text: string;
  try {
    text = (await fs.readFile(path)).toString('utf8');
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') warn?.(`cannot read ${path}, ignored: ${errorMessage(err)}`);
    return {};
  }
  try {
    const parsed = JSON.parse(text) as unknown;
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
      throw new Error('not an object');
    const out: Record<string, string> = {};
    for (const [id, address] of Object.entries(parsed)) {
      if (!SERVER_ID.test(id) || typeof address !== 'string' || address.length === 0 || address.length > 300)
        throw new Error(`bad entry ${JSON.stringify(id)}`);
      out[id] = address;
    }
    return out;
  } catch (err) {
    warn?.(`${path} is damaged, ignored: ${errorMessage(err)}`);
    return {};
  }
}

/** Replaces the file with `addresses`, atomically and durably. */
export function savePeerAddresses(
  dir: string,
  addresses: Record<string, string>,
  fs: StorageFs = nodeFs,
): Promise<void> {
  const sorted = Object.fromEntries(Object.entries(addresses).sort(([a], [b]) => (a < b ? -1 : 1)));
  return writeFileAtomic(fs, join(dir, PEERS_FILE), `${JSON.stringify(sorted, null, 2)}\n`, 'peers');
}
