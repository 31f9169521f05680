/**
 * What the metrics endpoint computes from a member's state: the lock gauges (a scan of the state machine)
 * and the /health verdict with its bound on a follower's lag. The endpoint itself is tested over HTTP
 * against real servers in client/test/metrics.test.ts.
 */
import test from 'ava';
import type { Command, Outcome } from '../src/core/commands.js';
import { StateMachine } from '../src/core/state-machine.js';
import { HEALTH_MAX_LAG_ENTRIES, healthOf } from '../src/shell/metrics.js';
import type { LogStats, NodeStats } from '../src/stats.js';

test('lockStats counts read holds, write holds and queued acquires as grants and releases move', (t) => {
  const sm = new StateMachine({ pageBytes: 4096, segmentBytes: 1024 * 4096 });
  let index = 0;
  const run = (cmd: Command): Outcome => sm.apply(++index, cmd);
  const ok = (o: Outcome): any => {
    if (!o.result.ok) throw new Error(o.result.message);
    return o.result.value;
  };
  const open = (): number => ok(run({ op: 'open', timeoutMs: 1000, clientName: null })).sessionId;
  const [s1, s2, s3] = [open(), open(), open()];
  t.is(sm.sessionCount(), 3);
  ok(run({ op: 'create', sessionId: s1, seq: 1, name: 'x', size: 8, ifNotExists: false }));
  t.deepEqual(sm.lockStats(), { readHolds: 0, writeHolds: 0, waiters: 0 });
  const r1 = ok(run({ op: 'acquire', sessionId: s1, seq: 2, name: 'x', mode: 'read' })).granted;
  ok(run({ op: 'acquire', sessionId: s2, seq: 1, name: 'x', mode: 'read' }));
  ok(run({ op: 'acquire', sessionId: s3, seq: 1, name: 'x', mode: 'write' }));
  t.deepEqual(sm.lockStats(), { readHolds: 2, writeHolds: 0, waiters: 1 });
  const release = (sessionId: number, seq: number, token: number) =>
    ok(run({ op: 'release', sessionId, seq, name: 'x', mode: 'read', token, ranges: [], data: null }));
  release(s1, 3, r1.token);
  t.deepEqual(sm.lockStats(), { readHolds: 1, writeHolds: 0, waiters: 1 });
  // The last reader leaving hands the object to the queued writer.
  run({ op: 'close', sessionId: s2 });
  t.deepEqual(sm.lockStats(), { readHolds: 0, writeHolds: 1, waiters: 0 });
  t.is(sm.sessionCount(), 2);
});

function stats(log: Partial<LogStats>): NodeStats {
  return {
    id: 's2',
    clusterId: 'c',
    log: {
      role: 'follower',
      term: 3,
      leader: 's1',
      commitIndex: 100,
      appliedIndex: 100,
      lastIndex: 100,
      leaderCommitIndex: 100,
      peers: [],
      peerLinks: { sentBytes: 0, droppedMessages: 0 },
      wal: { appends: 0, bytes: 0, syncs: 0, firstIndex: 1, lastIndex: 100 },
      problem: null,
      ...log,
    },
    sessions: 0,
    objects: 0,
    logs: 0,
    locks: { readHolds: 0, writeHolds: 0, waiters: 0 },
    pagesServed: 0,
  };
}

test('health: a leader serves; a follower serves while it knows its leader and lags by at most the bound', (t) => {
  t.like(healthOf(stats({ role: 'leader', leader: 's2' })), { status: 'ok', role: 'leader' });
  t.like(healthOf(stats({})), { status: 'ok', role: 'follower', leader: 's1', lagEntries: 0 });
  const edge = stats({ appliedIndex: 100, leaderCommitIndex: 100 + HEALTH_MAX_LAG_ENTRIES });
  t.like(healthOf(edge), { status: 'ok', lagEntries: HEALTH_MAX_LAG_ENTRIES });
  const behind = healthOf(stats({ appliedIndex: 100, leaderCommitIndex: 101 + HEALTH_MAX_LAG_ENTRIES }));
  t.like(behind, { status: 'unavailable', reason: 'BEHIND', lagEntries: HEALTH_MAX_LAG_ENTRIES + 1 });
  t.regex(behind.message!, /1001 entries behind the commit index of leader s1/);
  t.like(healthOf(stats({ leaderCommitIndex: null })), { status: 'unavailable', reason: 'BEHIND' });
  t.like(healthOf(stats({ role: 'preCandidate', leader: null })), {
    status: 'unavailable',
    reason: 'NO_LEADER',
    message: 'no leader known: this member is a preCandidate',
  });
  t.like(healthOf(null), { status: 'unavailable', reason: 'STARTING' });
});

test('health: a member whose log refuses changes cannot serve, leader or not', (t) => {
  for (const role of ['leader', 'follower'] as const) {
    const failed = stats({ role, problem: { reason: 'LOG_FAILED', message: 'fdatasync failed: EIO' } });
    t.like(healthOf(failed), {
      status: 'unavailable',
      reason: 'LOG_FAILED',
      message: 'fdatasync failed: EIO',
    });
    const stalled = stats({ role, problem: { reason: 'WAL_STALLED', message: 'no space left' } });
    t.like(healthOf(stalled), { status: 'unavailable', reason: 'WAL_STALLED' });
  }
});
