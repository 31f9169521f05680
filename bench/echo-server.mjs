// The floor's server: a plain Node TCP echo server on an ephemeral loopback port, run as its own process.
// Prints `echo ready on 127.0.0.1:PORT`; SIGTERM stops it.
import { createServer } from 'node:net';

const sockets = new Set();
const server = createServer({ noDelay: true }, (socket) => {
  sockets.add(socket);
  socket.setNoDelay(true);
  socket.on('data', (chunk) => socket.write(chunk));
  socket.on('error', () => {});
  socket.on('close', () => sockets.delete(socket));
});

server.listen(0, '127.0.0.1', () => {
  const { address, port } = server.address();
  process.stdout.write(`echo ready on ${address}:${port}\n`);
});

function stop() {
  for (const s of sockets) s.destroy();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
