// Adds 1 to "compteur" N times, each under write access (read, add, write back, release).
import {
  close_persistant,
  init_persistant,
  p_access_readwrite,
  p_release_readwrite,
} from '@segmem/client/compat';

const times = Number(process.argv[2] ?? 100);
await init_persistant();
for (let i = 0; i < times; i++) {
  const cpt = await p_access_readwrite('compteur');
  cpt.writeInt32LE(cpt.readInt32LE(0) + 1);
  await p_release_readwrite(cpt);
}
await close_persistant();
console.log(`pid ${process.pid}: ${times} increments`);
