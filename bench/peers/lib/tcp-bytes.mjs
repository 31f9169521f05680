// Bytes moved over TCP, per owning process, from the kernel's own counters (tcp_info bytes_sent /
// bytes_received, read with `ss -tinp`). The same method for Redis, etcd and segmem: what crossed the sockets,
// protocol framing included, whatever the client library does.
import { execFileSync } from 'node:child_process';

/**
 * Sums bytes_sent / bytes_received of the established TCP sockets owned by each pid in `pids`.
 * Returns Map(pid -> { sent, received, sockets }), or null when `ss` is missing or shows no process owners
 * (it needs the right to see other processes' sockets).
 */
export function tcpBytesByPid(pids) {
  let out;
  try {
    out = execFileSync('ss', ['-tinpH', 'state', 'established'], {
      encoding: 'utf8',
      maxBuffer: 64 * 1024 * 1024,
    });
  } catch {
    return null;
  }
  const wanted = new Set(pids);
  const totals = new Map(pids.map((p) => [p, { sent: 0, received: 0, sockets: 0 }]));
  // Each socket is a line with the addresses and owners, followed by an indented line with tcp_info.
  let owner = null;
  for (const line of out.split('\n')) {
    if (line.length === 0) continue;
    if (line[0] !== ' ' && line[0] !== '\t') {
      owner = null;
      // A socket inherited by a fork lists several owners: count it once, for the first one we watch.
      for (const m of line.matchAll(/pid=(\d+)/g)) {
        const pid = Number(m[1]);
        if (wanted.has(pid)) {
          owner = pid;
          break;
        }
      }
      continue;
    }
    if (owner === null) continue;
    const t = totals.get(owner);
    t.sockets++;
    t.sent += Number(/\bbytes_sent:(\d+)/.exec(line)?.[1] ?? 0);
    t.received += Number(/\bbytes_received:(\d+)/.exec(line)?.[1] ?? 0);
    owner = null;
  }
  return totals;
}

/** Sums a Map from tcpBytesByPid over some pids. */
export function sumBytes(map, pids) {
  const s = { sent: 0, received: 0, sockets: 0 };
  for (const p of pids) {
    const t = map.get(p);
    if (!t) continue;
    s.sent += t.sent;
    s.received += t.received;
    s.sockets += t.sockets;
  }
  return s;
}
