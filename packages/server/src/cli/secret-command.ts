/** `segmem secret new FILE`: the cluster secret members of a replicated group prove to each other. */
import { createClusterSecretFile, readClusterSecretFile } from '../secret-file.js';
import { secretFingerprint } from '../shell/peer-auth.js';
import { parseCount } from './args.js';
import { type Command, out } from './common.js';

export const secretNew: Command = {
  name: 'secret new',
  args: [{ name: 'FILE' }],
  summary: 'create a cluster secret file for the members of a group',
  description: `Writes N random bytes, as hex, to FILE, created with mode 0600; an existing FILE is never
    overwritten. Give every member of the group a copy (segmem-server --cluster-secret-file FILE, or the
    config file's clusterSecretFile): members prove they hold it to each other before any consensus message,
    so a process that can reach the peer port but lacks it cannot disturb the group. Prints the secret's
    fingerprint, which each member records in its data directory at its first start.`,
  options: [{ name: 'bytes', value: 'N', help: 'how many random bytes, 16..1024', default: '32' }],
  async run(p) {
    const file = p.args[0]!;
    const bytes = parseCount('--bytes', p.values.get('bytes') ?? '32', 16, 1024);
    createClusterSecretFile(file, bytes);
    await out(
      `created ${file} (fingerprint ${secretFingerprint(readClusterSecretFile(file)).slice(0, 16)})\n`,
    );
    return 0;
  },
};
