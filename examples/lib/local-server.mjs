// Starts one segmem-server process on 127.0.0.1 with its data in a temporary directory, for the
// examples. Uses SEGMEM_SERVERS instead when it is set (an existing cluster).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const serverBin = join(
  dirname(fileURLToPath(import.meta.url)),
  '../../packages/server/bin/segmem-server.mjs',
);

export async function localServer() {
  if (process.env.SEGMEM_SERVERS) return { servers: process.env.SEGMEM_SERVERS, stop: async () => {} };
  const dir = mkdtempSync(join(tmpdir(), 'segmem-example-'));
  const proc = spawn(process.execPath, [serverBin, '--id', 's1', '--listen', '127.0.0.1:0', '--data', dir], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const servers = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: proc.stdout });
    lines.on('line', (line) => {
      const m = / ready on (\S+)$/.exec(line);
      if (m) resolve(m[1]);
    });
    proc.once('exit', (code) => reject(new Error(`segmem-server exited with code ${code}`)));
  });
  return {
    servers,
    async stop() {
      if (proc.exitCode === null) {
        proc.kill('SIGTERM');
        await new Promise((r) => proc.once('exit', r));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Runs `node script args...` with SEGMEM_SERVERS set; resolves with its stdout lines. */
export function run(script, args, servers) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, SEGMEM_SERVERS: servers },
    });
    const lines = [];
    createInterface({ input: child.stdout }).on('line', (l) => lines.push(l));
    child.once('exit', (code) =>
      code === 0 ? resolve(lines) : reject(new Error(`${script} exited with code ${code}`)),
    );
  });
}
