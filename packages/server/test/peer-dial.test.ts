/**
 * A peer link that connects but never gets through its handshake (a peer wedged, or a path that swallows
 * packets after the SYN) is given up and dialled again, instead of waiting on that connection for ever.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type Socket } from 'node:net';
import { systemEnv } from '@segmem/protocol';
import test from 'ava';
import { PEER_DIAL_TIMEOUT_MS, PeerTransport } from '../src/shell/peers.js';

test('a link whose peer accepts the connection and never answers the handshake dials again', async (t) => {
  const accepted: Socket[] = [];
  // A peer that takes connections and says nothing: the dialler's PEER_HELLO gets no challenge.
  const silent = createServer((s) => {
    accepted.push(s);
    s.on('error', () => {});
    s.resume(); // read and drop the PEER_HELLO, so the dialler's close is seen
  });
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  const port = (silent.address() as { port: number }).port;
  const lines: string[] = [];
  const transport = new PeerTransport(
    's1',
    'c',
    { s1: '127.0.0.1:1', s2: `127.0.0.1:${port}` },
    ['s1', 's2'],
    null,
    systemEnv,
    randomBytes(32),
    undefined,
    (line) => lines.push(line),
  );
  try {
    const deadline = Date.now() + 4 * PEER_DIAL_TIMEOUT_MS;
    while (accepted.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    t.true(accepted.length >= 2, `the silent peer saw ${accepted.length} connection(s)`);
    t.true(
      lines.some((l) => l.includes(`not through its handshake within ${PEER_DIAL_TIMEOUT_MS} ms`)),
      lines.join('\n'),
    );
    // The first connection was given up, not left open beside the new one.
    await new Promise<void>((r) => (accepted[0]!.destroyed ? r() : accepted[0]!.once('close', () => r())));
    t.pass();
  } finally {
    transport.close();
    for (const s of accepted) s.destroy();
    await new Promise<void>((r) => silent.close(() => r()));
  }
});
