// Bytes moved over TCP, per owning process, from the kernel's own counters (tcp_info bytes_sent /
// bytes_received, read with `ss -tinp`). The same method for Redis, etcd and segmem: what crossed the sockets,
// protocol framing included, whatever the client library does.
import { execFileSync } from 'node:child_process';

/**
 * The established TCP sockets owned by the pids in `pids`: Map("local peer" -> { pid, sent, received }),
 * or null when `ss` is missing or fails.
 */
export function tcpSockets(pids) {
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
  const sockets = new Map();
  // Each socket is a line with the addresses and owners, followed by an indented line with tcp_info.
  let current = null;
  for (const line of out.split('\n')) {
    if (line.length === 0) continue;
    if (line[0] !== ' ' && line[0] !== '\t') {
      current = null;
      // Recv-Q Send-Q Local Peer users:(...). A socket inherited by a fork lists several owners: count it
      // once, for the first one we watch.
      const cols = line.trim().split(/\s+/);
      for (const m of line.matchAll(/pid=(\d+)/g)) {
        const pid = Number(m[1]);
        if (wanted.has(pid)) {
          current = { key: `${cols[2]} ${cols[3]}`, pid };
          break;
        }
      }
      continue;
    }
    if (current === null) continue;
    sockets.set(current.key, {
      pid: current.pid,
      sent: Number(/\bbytes_sent:(\d+)/.exec(line)?.[1] ?? 0),
      received: Number(/\bbytes_received:(\d+)/.exec(line)?.[1] ?? 0),
    });
    current = null;
  }
  return sockets;
}

/**
 * Bytes each group of pids moved between two tcpSockets() snapshots. A socket opened in between counts
 * whole; one closed in between is counted in `closed` (what it carried after `before` is lost).
 */
export function bytesBetween(before, after, pids) {
  const set = new Set(pids);
  const d = { sent: 0, received: 0, sockets: 0, closed: 0 };
  for (const [key, s] of after) {
    if (!set.has(s.pid)) continue;
    const b = before.get(key);
    d.sent += s.sent - (b?.sent ?? 0);
    d.received += s.received - (b?.received ?? 0);
    d.sockets++;
  }
  for (const [key, s] of before) if (set.has(s.pid) && !after.has(key)) d.closed++;
  return d;
}
