// The seed's program, line for line, with segmem's compat API:
//
//   int *cpt;
//   init_persistant();
//   p_create(sizeof(int), "compteur");
//   cpt = p_access_readwrite("compteur");
//   *cpt = 23*45;
//   p_release_readwrite(cpt);
//
// With SEGMEM_SERVERS set it talks to that cluster; without, it uses an embedded store in ./segmem-data.
import {
  close_persistant,
  init_persistant,
  p_access_read,
  p_access_readwrite,
  p_create,
  p_release_read,
  p_release_readwrite,
} from '@segmem/client/compat';

await init_persistant();
try {
  await p_create(4, 'compteur');
} catch (err) {
  if (err.code !== 'ALREADY_EXISTS') throw err; // a second run finds it there: it is persistent
}
const cpt = await p_access_readwrite('compteur');
cpt.writeInt32LE(23 * 45);
await p_release_readwrite(cpt);

const check = await p_access_read('compteur');
console.log(`compteur = ${check.readInt32LE(0)}`);
await p_release_read(check);
await close_persistant();
