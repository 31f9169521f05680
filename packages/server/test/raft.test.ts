/**
 * Scenario tests of the consensus core, driven by a tiny in-test network with zero latency: every
 * `stabilize()` handles each node's Ready (persist to its MemoryStorage, then send, then apply) and delivers
 * the messages, until nothing moves. Links can be cut and nodes crashed and restarted from their storage.
 * Test names follow the Raft paper's and thesis's sentences, as etcd's raft_paper_test.go does.
 */
import test from 'ava';
import fc from 'fast-check';
import { decodeConfChange, encodeConfChange } from '../src/raft/confchange.js';
import { MemoryStorage } from '../src/raft/memory-storage.js';
import { coalesceAppendAcks, type RaftConfig, RaftNode } from '../src/raft/node.js';
import { committedIndex, naiveCommittedIndex } from '../src/raft/quorum.js';
import {
  CompactedError,
  type Entry,
  type Message,
  type NodeId,
  NotLeaderError,
  type ReadState,
} from '../src/raft/types.js';
import { Prng } from '../src/sim/prng.js';

interface TestNode {
  raft: RaftNode;
  storage: MemoryStorage;
  /** Every committed entry delivered, in order (across restarts: the state machine is "durable"). */
  applied: Entry[];
  readStates: ReadState[];
}

type Options = Partial<Omit<RaftConfig, 'id' | 'storage' | 'rand'>>;

class Cluster {
  readonly nodes = new Map<NodeId, TestNode>();
  private queue: Message[] = [];
  private readonly down = new Set<NodeId>();
  private readonly cut = new Set<string>();
  /** Return false to drop a message. */
  filter: ((m: Message) => boolean) | null = null;
  /** Rewrites (or drops, with null) a message on the wire. */
  transform: ((m: Message) => Message | null) | null = null;
  readonly prng: Prng;
  /** Every message delivered, for assertions. */
  delivered: Message[] = [];

  constructor(
    ids: NodeId[],
    private readonly opts: Options = {},
    seed = 1,
  ) {
    this.prng = new Prng(seed);
    for (const id of ids) this.addNode(id, ids);
  }

  addNode(id: NodeId, members: NodeId[] = []): TestNode {
    const storage = new MemoryStorage(members);
    const node: TestNode = { raft: this.makeRaft(id, storage), storage, applied: [], readStates: [] };
    this.nodes.set(id, node);
    return node;
  }

  private makeRaft(id: NodeId, storage: MemoryStorage, applied?: number, extra: Options = {}): RaftNode {
    return new RaftNode({
      id,
      storage,
      electionTicks: 10,
      heartbeatTicks: 1,
      rand: () => this.prng.float(),
      ...this.opts,
      ...extra,
      ...(applied !== undefined ? { applied } : {}),
    });
  }

  get(id: NodeId): RaftNode {
    return this.nodes.get(id)!.raft;
  }

  crash(id: NodeId): void {
    this.down.add(id);
  }

  /**
   * Rebuilds the node from what its storage holds; its applied entries are kept (a durable state machine).
   * `extra`: configuration for this node only.
   */
  restart(id: NodeId, extra: Options = {}): void {
    const n = this.nodes.get(id)!;
    const applied = n.applied.length > 0 ? n.applied[n.applied.length - 1]!.index : undefined;
    n.raft = this.makeRaft(
      id,
      n.storage,
      applied === undefined
        ? undefined
        : Math.min(Math.max(applied, n.storage.firstIndex() - 1), n.storage.lastIndex()),
      extra,
    );
    this.down.delete(id);
  }

  /**
   * What a member's storage healing does to it (storage/raft-storage.ts): its log is cut after `last`, its
   * applied state goes back with it, and it restarts one term past `reachedTerm`, voting for itself, with
   * `rejoinTerm` at that term unless `rejoin` is false (the unsafe variant a test shows losing data).
   */
  loseStorageAfter(id: NodeId, last: number, reachedTerm: number, rejoin = true): void {
    const n = this.nodes.get(id)!;
    const old = n.storage;
    const cut = new MemoryStorage(old.snapshot().meta.members);
    cut.append(old.entries(old.firstIndex(), last + 1));
    const term = reachedTerm + 1;
    cut.setHardState({ term, vote: id, commit: Math.min(old.hardState().commit, last) });
    n.storage = cut;
    n.applied = n.applied.filter((e) => e.index <= last);
    this.restart(id, rejoin ? { rejoinTerm: term } : {});
  }

  isolate(id: NodeId): void {
    for (const other of this.nodes.keys()) {
      if (other === id) continue;
      this.cut.add(`${id}>${other}`);
      this.cut.add(`${other}>${id}`);
    }
  }

  cutLink(from: NodeId, to: NodeId): void {
    this.cut.add(`${from}>${to}`);
  }

  heal(): void {
    this.cut.clear();
    this.filter = null;
    this.transform = null;
  }

  /** Handles every pending Ready and delivers every message, until nothing moves. */
  stabilize(maxRounds = 10_000): void {
    for (let round = 0; round < maxRounds; round++) {
      let moved = false;
      for (const [id, n] of this.nodes) {
        if (this.down.has(id)) continue;
        while (n.raft.hasReady()) {
          moved = true;
          const rd = n.raft.ready();
          if (rd.snapshot) n.storage.applySnapshot(rd.snapshot);
          n.storage.append(rd.entries);
          if (rd.hardState) n.storage.setHardState(rd.hardState);
          this.queue.push(...rd.messages);
          if (rd.snapshot) n.applied = n.applied.filter((e) => e.index <= rd.snapshot!.meta.index);
          for (const e of rd.committed) n.applied.push(e);
          n.readStates.push(...rd.readStates);
          n.raft.advance();
        }
      }
      const batch = this.queue;
      this.queue = [];
      for (const m of batch) {
        moved = true;
        if (this.down.has(m.to) || this.down.has(m.from) || this.cut.has(`${m.from}>${m.to}`)) continue;
        if (this.filter && !this.filter(m)) continue;
        const out = this.transform ? this.transform(m) : m;
        if (!out) continue;
        this.delivered.push(out);
        this.nodes.get(m.to)?.raft.step(out);
      }
      if (!moved) return;
    }
    throw new Error('the cluster did not stabilize');
  }

  /** Ticks every live node `n` times, stabilizing after each tick. */
  tick(n = 1): void {
    for (let i = 0; i < n; i++) {
      for (const [id, node] of this.nodes) if (!this.down.has(id)) node.raft.tick();
      this.stabilize();
    }
  }

  campaign(id: NodeId): void {
    this.get(id).campaign();
    this.stabilize();
  }

  leaders(): NodeId[] {
    return [...this.nodes]
      .filter(([id, n]) => !this.down.has(id) && n.raft.role === 'leader')
      .map(([id]) => id);
  }

  propose(id: NodeId, text: string): { index: number; term: number } {
    const at = this.get(id).propose(Buffer.from(text));
    this.stabilize();
    return at;
  }

  /** The data of the non-empty normal entries a node applied. */
  appliedData(id: NodeId): string[] {
    return this.nodes
      .get(id)!
      .applied.filter((e) => e.type === 'normal' && e.data.length > 0)
      .map((e) => e.data.toString());
  }

  logTerms(id: NodeId): number[] {
    const r = this.get(id);
    const out: number[] = [];
    for (let i = r.firstIndex; i <= r.lastIndex; i++) out.push(r.termAt(i)!);
    return out;
  }
}

const ids = (n: number): NodeId[] => Array.from({ length: n }, (_, i) => `n${i + 1}`);

for (const size of [3, 5]) {
  test(`election: when followers hear nothing for an election timeout, exactly one of ${size} becomes leader`, (t) => {
    const c = new Cluster(ids(size), {}, size);
    for (let i = 0; i < 100 && c.leaders().length === 0; i++) c.tick();
    const leaders = c.leaders();
    t.is(leaders.length, 1);
    const leader = c.get(leaders[0]!);
    for (const id of ids(size)) {
      t.is(c.get(id).term, leader.term, 'all members reach the leader term');
      t.is(c.get(id).leader, leader.id, 'every member knows the leader');
    }
    // The new leader's no-op commits on everyone.
    t.true(leader.commitIndex >= 1);
    c.tick(3);
    for (const id of ids(size)) t.is(c.get(id).commitIndex, leader.commitIndex);
  });
}

test('election: a candidate wins with a majority of votes and persists its vote before asking', (t) => {
  const c = new Cluster(ids(3), { preVote: false });
  c.get('n1').campaign();
  const n1 = c.nodes.get('n1')!;
  const rd = n1.raft.ready();
  t.deepEqual(rd.hardState, { term: 1, vote: 'n1', commit: 0 });
  t.true(rd.mustSync, 'a vote is fsynced before the vote requests go out');
  t.deepEqual(
    rd.messages.map((m) => [m.type, m.to, m.term]),
    [
      ['vote', 'n2', 1],
      ['vote', 'n3', 1],
    ],
  );
  n1.storage.setHardState(rd.hardState!);
  n1.raft.advance();
  for (const m of rd.messages) c.get(m.to).step(m);
  for (const id of ['n2', 'n3']) {
    const peer = c.nodes.get(id)!;
    const prd = peer.raft.ready();
    t.deepEqual(
      prd.hardState,
      { term: 1, vote: 'n1', commit: 0 },
      `${id} records its vote in the Ready that answers`,
    );
    t.true(prd.mustSync);
    t.deepEqual(
      prd.messages.map((m) => [m.type, m.reject]),
      [['voteResp', false]],
    );
    peer.storage.setHardState(prd.hardState!);
    peer.raft.advance();
    for (const m of prd.messages) c.get(m.to).step(m);
  }
  t.is(c.get('n1').role, 'leader');
});

test('election: a member votes at most once per term, and never for a less up-to-date log', (t) => {
  const c = new Cluster(ids(3), { preVote: false, checkQuorum: false });
  c.campaign('n1');
  c.propose('n1', 'a');
  c.isolate('n3');
  c.propose('n1', 'b'); // n3 misses it
  c.heal();
  const n2 = c.nodes.get('n2')!;
  t.is(n2.raft.term, 1);
  n2.raft.step({ type: 'vote', from: 'n3', to: 'n2', term: 2, logIndex: 2, logTerm: 1 });
  const rd1 = n2.raft.ready();
  t.deepEqual(
    rd1.messages.map((m) => [m.type, m.to, m.reject]),
    [['voteResp', 'n3', true]],
    'a candidate whose log lacks an entry this member has is refused',
  );
  n2.raft.advance();
  n2.raft.step({ type: 'vote', from: 'n1', to: 'n2', term: 2, logIndex: 3, logTerm: 1 });
  n2.raft.step({ type: 'vote', from: 'n3', to: 'n2', term: 2, logIndex: 3, logTerm: 1 });
  const rd2 = n2.raft.ready();
  t.deepEqual(
    rd2.messages.map((m) => [m.type, m.to, m.reject]),
    [
      ['voteResp', 'n1', false],
      ['voteResp', 'n3', true],
    ],
    'the first up-to-date candidate gets the vote, the second one in the same term does not',
  );
  t.deepEqual(rd2.hardState, { term: 2, vote: 'n1', commit: c.get('n1').commitIndex });
});

test('pre-vote and leader stickiness: a partitioned member that rejoins does not depose a healthy leader', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  const term = c.get('n1').term;
  c.isolate('n3');
  c.tick(100); // n3 times out again and again, but only pre-votes: its term does not move.
  t.is(c.get('n3').term, term, 'pre-vote keeps an isolated member from inflating its term');
  t.not(c.get('n3').role, 'leader');
  c.heal();
  c.tick(30);
  t.is(c.get('n1').role, 'leader', 'the leader keeps its leadership');
  t.is(c.get('n1').term, term, 'and its term');
  t.is(c.get('n3').leader, 'n1');
  c.propose('n1', 'x');
  t.deepEqual(c.appliedData('n3'), ['x'], 'the rejoined member catches up');
});

test('leader stickiness: a member that heard from the leader ignores vote requests even of a higher term', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  const term = c.get('n1').term;
  c.get('n2').step({ type: 'vote', from: 'n3', to: 'n2', term: term + 5, logIndex: 100, logTerm: term });
  t.is(c.get('n2').term, term);
  t.false(c.get('n2').hasReady(), 'not even an answer');
});

test('without pre-vote, a rejoining member with a higher term forces a new election (no stuck cluster)', (t) => {
  const c = new Cluster(ids(3), { preVote: false });
  c.campaign('n1');
  c.isolate('n3');
  c.tick(60); // n3 campaigns in vain and raises its term
  const staleTerm = c.get('n1').term;
  t.true(c.get('n3').term > staleTerm);
  c.heal();
  c.tick(60);
  // The old leader's appends at a lower term are answered with n3's term: the leader steps down and
  // the next election includes n3.
  t.is(c.leaders().length, 1);
  const leader = c.get(c.leaders()[0]!);
  t.true(leader.term >= c.get('n3').term);
  c.propose(leader.id, 'y');
  t.deepEqual(c.appliedData('n3'), ['y']);
});

test('check-quorum: a leader cut off from the majority steps down within an election timeout', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  c.isolate('n1');
  c.tick(25);
  t.not(c.get('n1').role, 'leader');
  t.throws(() => c.get('n1').propose(Buffer.from('z')), { instanceOf: NotLeaderError });
  // The majority side elected a new leader meanwhile.
  const leaders = c.leaders();
  t.is(leaders.length, 1);
  t.not(leaders[0], 'n1');
});

test('check-quorum off: a cut-off leader stays leader, but commits nothing', (t) => {
  const c = new Cluster(ids(3), { checkQuorum: false });
  c.campaign('n1');
  c.isolate('n1');
  c.tick(25);
  t.is(c.get('n1').role, 'leader');
  const commit = c.get('n1').commitIndex;
  c.propose('n1', 'lost');
  t.is(c.get('n1').commitIndex, commit);
});

test('log replication: an entry commits once a majority stores it, and is applied in order on every member', (t) => {
  const c = new Cluster(ids(5));
  c.campaign('n1');
  c.isolate('n4');
  c.isolate('n5');
  const a = c.propose('n1', 'a');
  t.is(c.get('n1').commitIndex, a.index, '3 of 5 is a majority');
  c.isolate('n3');
  const b = c.propose('n1', 'b');
  t.is(c.get('n1').commitIndex, a.index, '2 of 5 is not');
  t.is(c.get('n2').lastIndex, b.index, 'n2 stores it');
  c.heal();
  c.tick(3);
  t.is(c.get('n1').commitIndex, b.index);
  for (const id of ids(5))
    t.deepEqual(c.appliedData(id), ['a', 'b'], `${id} applied each entry once, in order`);
});

test('log replication: committed entries are delivered once, in order, across a restart', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  for (const x of ['a', 'b', 'c']) c.propose('n1', x);
  c.crash('n2');
  c.propose('n1', 'd');
  c.restart('n2');
  c.tick(3);
  t.deepEqual(c.appliedData('n2'), ['a', 'b', 'c', 'd']);
  const idx = c.nodes.get('n2')!.applied.map((e) => e.index);
  t.deepEqual(
    idx,
    idx.map((_, i) => i + 1),
  );
});

test('Figure 8: a leader does not commit an entry of an older term by counting replicas', (t) => {
  // The paper's setting (no pre-vote, no leases), elections by hand, one entry per append so that the
  // old entry can be seen on a majority while the leader's own entry is not.
  const c = new Cluster(ids(5), { preVote: false, checkQuorum: false, maxEntriesPerMessage: 1 });
  const elect = (id: NodeId) => {
    for (let i = 0; i < 3 && c.get(id).role !== 'leader'; i++) c.campaign(id);
    t.is(c.get(id).role, 'leader', `${id} wins`);
  };
  elect('n1');
  // (a) n1 replicates index 2 ('x', its term) to n2 only.
  c.filter = (m) => !(m.from === 'n1' && m.type === 'append' && m.to !== 'n2');
  const x = c.propose('n1', 'x');
  t.deepEqual(x, { index: 2, term: 1 });
  t.is(c.get('n1').commitIndex, 1);
  // (b) n1 crashes; n5 wins with n3's and n4's votes and writes its own entry at index 2, locally only.
  c.crash('n1');
  c.filter = (m) => !(m.from === 'n5' && m.type === 'append');
  elect('n5');
  t.is(c.get('n5').termAt(2), 2);
  // (c) n5 crashes; n1 restarts, wins term 3 and replicates index 2 (term 1) to n3 and n4, but never its
  // own entry (index 3): the wire strips it.
  c.crash('n5');
  c.restart('n1');
  c.filter = null;
  c.transform = (m) =>
    m.type === 'append' && m.entries?.some((e) => e.index >= 3) ? { ...m, entries: [] } : m;
  elect('n1');
  t.is(c.get('n1').term, 3);
  for (const id of ['n2', 'n3', 'n4']) t.deepEqual(c.logTerms(id), [1, 1], `${id} holds index 2 of term 1`);
  t.is(c.get('n1').commitIndex, 1, 'index 2 is on a majority, but of an older term: not committed');
  // (d) n1 crashes; n5 returns and, being more up to date (last term 2), overwrites index 2 everywhere.
  c.crash('n1');
  c.restart('n5');
  c.transform = null;
  elect('n5');
  c.propose('n5', 'y');
  for (const id of ['n2', 'n3', 'n4', 'n5']) {
    t.deepEqual(c.appliedData(id), ['y'], `${id} never applied the entry that was not committed`);
    t.is(c.get(id).termAt(2), 2, `index 2 on ${id} is n5's entry`);
  }
});

test('Figure 8, positive side: once the leader commits an entry of its term, earlier entries commit with it', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  c.isolate('n2');
  c.isolate('n3');
  c.propose('n1', 'old'); // index 2, only on n1
  c.crash('n1');
  c.heal();
  c.restart('n1');
  c.isolate('n3');
  c.tick(40); // n1 or n2 leads; n1's log is more up to date, so only n1 can win with n2's vote
  t.is(c.get('n1').role, 'leader');
  t.deepEqual(c.appliedData('n1'), ['old'], "'old' commits with the new term's no-op");
  t.deepEqual(c.appliedData('n2'), ['old']);
});

test('log matching: a follower with a conflicting suffix is overwritten; fast back-off skips whole terms', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  c.propose('n1', 'a');
  // n1 writes many entries that only it has, in its term.
  c.isolate('n1');
  for (let i = 0; i < 30; i++) c.get('n1').propose(Buffer.from(`stale${i}`));
  c.stabilize();
  // n2 becomes leader of a new term with n3 and writes other entries.
  c.tick(30);
  const leader = c.leaders().find((id) => id !== 'n1')!;
  t.truthy(leader);
  for (let i = 0; i < 5; i++) c.propose(leader, `fresh${i}`);
  // n1 rejoins: its 30 stale entries conflict.
  const before = c.delivered.length;
  c.heal();
  c.tick(5);
  t.is(c.get('n1').role, 'follower');
  t.deepEqual(c.logTerms('n1'), c.logTerms(leader), 'the follower log matches the leader');
  t.deepEqual(c.appliedData('n1'), c.appliedData(leader));
  t.false(c.appliedData('n1').some((d) => d.startsWith('stale')));
  const rejects = c.delivered
    .slice(before)
    .filter((m) => m.type === 'appendResp' && m.reject && m.from === 'n1');
  t.true(rejects.length <= 2, `back-off by term, not one entry at a time (${rejects.length} rejections)`);
});

test('snapshot: a follower behind the compaction point is caught up with the leader snapshot', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  c.isolate('n3');
  for (let i = 0; i < 20; i++) c.propose('n1', `e${i}`);
  // The leader compacts its log (the "state machine" is the list of entries applied).
  const n1 = c.nodes.get('n1')!;
  const upTo = n1.raft.appliedIndex;
  n1.storage.compact(upTo, Buffer.from(JSON.stringify(c.appliedData('n1'))));
  t.is(n1.raft.firstIndex, upTo + 1);
  c.heal();
  c.tick(3);
  const n3 = c.nodes.get('n3')!;
  t.is(n3.storage.snapshot().meta.index, upTo, 'n3 installed the snapshot');
  t.deepEqual(n3.storage.snapshot().meta.members, ['n1', 'n2', 'n3']);
  t.is(n3.raft.commitIndex, c.get('n1').commitIndex);
  c.propose('n1', 'after');
  t.is(n3.applied[n3.applied.length - 1]!.data.toString(), 'after', 'and then follows by appends');
  t.true(
    c.delivered.some((m) => m.type === 'snapshot' && m.to === 'n3'),
    'a snapshot message was sent',
  );
});

test('membership: a new node starts empty, is caught up, then counts in the quorum', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  for (let i = 0; i < 5; i++) c.propose('n1', `e${i}`);
  // A joining node starts with an empty log and the cluster's bootstrap membership (the configuration at
  // index 0, which does not include it): it never campaigns on its own, and replays the conf entries.
  c.addNode('n4', ids(3));
  c.tick(30);
  t.is(c.get('n4').role, 'follower');
  t.is(c.get('n4').term, 0);
  c.get('n1').proposeConfChange({ op: 'add', id: 'n4' });
  c.stabilize();
  t.deepEqual(c.get('n1').members, ['n1', 'n2', 'n3', 'n4']);
  t.deepEqual(c.get('n4').members, ['n1', 'n2', 'n3', 'n4'], 'the new node learns the configuration');
  t.deepEqual(c.appliedData('n4'), c.appliedData('n1'), 'and the whole log');
  // Now 3 of 4 are needed: with n2 and n3 away, nothing commits.
  c.isolate('n2');
  c.isolate('n3');
  const commit = c.get('n1').commitIndex;
  c.get('n1').propose(Buffer.from('needs3'));
  c.stabilize();
  t.is(c.get('n1').commitIndex, commit);
  c.heal();
  c.tick(2);
  t.true(c.get('n1').commitIndex > commit);
});

test('membership: a new node behind the compaction point is caught up by snapshot, then by appends', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  for (let i = 0; i < 10; i++) c.propose('n1', `e${i}`);
  const n1 = c.nodes.get('n1')!;
  const upTo = n1.raft.appliedIndex;
  n1.storage.compact(upTo, Buffer.from('state'));
  c.addNode('n4', ids(3));
  c.get('n1').proposeConfChange({ op: 'add', id: 'n4' });
  c.stabilize();
  const n4 = c.nodes.get('n4')!;
  t.is(n4.storage.snapshot().meta.index, upTo, 'the snapshot, since the entries it needs are compacted');
  t.deepEqual(n4.storage.snapshot().meta.members, ids(3), "with the snapshot's membership");
  t.deepEqual(n4.raft.members, ids(4), 'then the conf entry after it, by append');
  c.propose('n1', 'after');
  t.is(n4.applied[n4.applied.length - 1]!.data.toString(), 'after');
});

test('membership: a removed follower stops campaigning; one change at a time', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  c.propose('n1', 'a');
  c.get('n1').proposeConfChange({ op: 'remove', id: 'n3' });
  t.throws(() => c.get('n1').proposeConfChange({ op: 'add', id: 'n9' }), { message: /in progress/ });
  c.stabilize();
  t.deepEqual(c.get('n1').members, ['n1', 'n2']);
  t.notThrows(
    () => c.get('n1').proposeConfChange({ op: 'add', id: 'n9' }),
    'the next change, once committed',
  );
  c.stabilize();
  t.deepEqual(c.get('n1').members, ['n1', 'n2', 'n9']);
  const term = c.get('n1').term;
  c.isolate('n3');
  c.tick(100);
  t.not(c.get('n3').role, 'preCandidate');
  t.not(c.get('n3').role, 'candidate');
  t.is(c.get('n3').term, term, 'a removed member never campaigns');
});

test('membership: a leader that removes itself steps down once the change commits; the rest elect a leader', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  c.propose('n1', 'a');
  c.get('n1').proposeConfChange({ op: 'remove', id: 'n1' });
  t.throws(() => c.get('n1').propose(Buffer.from('b')), { instanceOf: NotLeaderError });
  c.stabilize();
  t.is(c.get('n1').role, 'follower');
  t.deepEqual(c.get('n2').members, ['n2', 'n3']);
  c.tick(40);
  const leaders = c.leaders();
  t.is(leaders.length, 1);
  t.not(leaders[0], 'n1');
  c.propose(leaders[0]!, 'b');
  t.deepEqual(c.appliedData('n2'), ['a', 'b']);
});

test('membership: an uncommitted change is rolled back when its entry is truncated', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  c.isolate('n1');
  c.get('n1').proposeConfChange({ op: 'add', id: 'n4' });
  c.stabilize();
  t.deepEqual(c.get('n1').members, ['n1', 'n2', 'n3', 'n4'], 'in effect when appended');
  c.tick(30);
  const leader = c.leaders().find((id) => id !== 'n1')!;
  c.propose(leader, 'x');
  c.heal();
  c.tick(3);
  t.deepEqual(c.get('n1').members, ['n1', 'n2', 'n3'], 'rolled back with the truncated entry');
  const confs = c.nodes
    .get('n1')!
    .applied.filter((e) => e.type === 'conf')
    .map((e) => decodeConfChange(e.data));
  t.deepEqual(confs, []);
});

test('leadership transfer: the target is caught up, then campaigns at once, skipping pre-vote', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  c.isolate('n3');
  for (let i = 0; i < 3; i++) c.propose('n1', `e${i}`);
  c.heal();
  const term = c.get('n1').term;
  c.get('n1').transferLeadership('n3');
  t.throws(() => c.get('n1').propose(Buffer.from('no')), {
    instanceOf: NotLeaderError,
    message: /n3/,
  });
  c.stabilize();
  t.is(c.get('n3').role, 'leader');
  t.is(c.get('n3').term, term + 1);
  t.is(c.get('n1').leader, 'n3');
  t.false(
    c.delivered.some((m) => m.type === 'preVote' && m.from === 'n3'),
    'no pre-vote round',
  );
  t.true(c.delivered.some((m) => m.type === 'timeoutNow' && m.to === 'n3'));
  c.propose('n3', 'after');
  t.deepEqual(c.appliedData('n1'), ['e0', 'e1', 'e2', 'after']);
});

test('timeoutNow is honoured only from the leader this member follows, in its term', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  c.stabilize();
  const n2 = c.get('n2');
  const term = n2.term;
  // From a member that does not lead, from the leader in a later term, and from a stranger.
  for (const m of [
    { from: 'n3', term },
    { from: 'n1', term: term + 5 },
    { from: 'n9', term },
  ]) {
    n2.step({ type: 'timeoutNow', to: 'n2', ...m });
    t.is(n2.role, 'follower');
    t.is(n2.term, term, `no new term after a timeoutNow from ${m.from} in term ${m.term}`);
    t.false(n2.hasReady() && n2.ready().messages.some((x) => x.type === 'vote'), 'no campaign');
  }
  t.is(c.get('n1').role, 'leader');
});

test('leadership transfer: abandoned after an election timeout when the target is unreachable', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  c.isolate('n3');
  c.get('n1').transferLeadership('n3');
  t.throws(() => c.get('n1').propose(Buffer.from('no')), { instanceOf: NotLeaderError });
  c.tick(12);
  t.is(c.get('n1').role, 'leader');
  t.notThrows(() => c.get('n1').propose(Buffer.from('yes')));
});

test('readIndex: the leader confirms its leadership with a majority before answering', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  c.propose('n1', 'a');
  const n1 = c.nodes.get('n1')!;
  c.isolate('n1');
  c.get('n1').readIndex(7);
  c.stabilize();
  t.deepEqual(n1.readStates, [], 'no answer without a majority');
  c.heal();
  c.get('n1').readIndex(8);
  c.stabilize();
  t.deepEqual(
    n1.readStates.map((r) => r.context),
    [7, 8],
    'both answered once a majority acknowledged the later round',
  );
  t.true(n1.readStates.every((r) => r.index === c.get('n1').commitIndex));
  t.throws(() => c.get('n2').readIndex(9), { instanceOf: NotLeaderError, message: /n1/ });
});

test('readIndex: a new leader answers only after committing an entry of its own term', (t) => {
  const c = new Cluster(ids(3), { preVote: false, checkQuorum: false });
  c.campaign('n1');
  c.propose('n1', 'a');
  c.crash('n1');
  // n2 wins, but its appends (its no-op) cannot reach anyone yet.
  c.filter = (m) => !(m.from === 'n2' && m.type === 'append');
  c.campaign('n2');
  t.is(c.get('n2').role, 'leader');
  const n2 = c.nodes.get('n2')!;
  c.get('n2').readIndex(1);
  c.tick(2);
  t.deepEqual(n2.readStates, [], 'held back: the no-op is not committed');
  c.filter = null;
  c.tick(2);
  t.deepEqual(
    n2.readStates.map((r) => r.context),
    [1],
  );
  t.is(c.get('n2').termAt(n2.readStates[0]!.index), c.get('n2').term, 'the read index is in the new term');
});

test('restart: a node keeps its term, vote and log from storage, and does not vote twice in a term', (t) => {
  const c = new Cluster(ids(3), { preVote: false });
  c.campaign('n1');
  c.propose('n1', 'a');
  const term = c.get('n2').term;
  c.crash('n2');
  c.restart('n2');
  t.is(c.get('n2').term, term);
  t.is(c.get('n2').votedFor, 'n1');
  t.is(c.get('n2').lastIndex, c.get('n1').lastIndex);
  c.get('n2').step({ type: 'vote', from: 'n3', to: 'n2', term, logIndex: 100, logTerm: term });
  const rd = c.nodes.get('n2')!.raft.ready();
  t.deepEqual(
    rd.messages.map((m) => [m.type, m.reject]),
    [['voteResp', true]],
  );
});

test('lost storage: a rejoining member neither campaigns nor grants (pre-)votes until its log reaches its rejoin term', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  c.propose('n1', 'a');
  const term = c.get('n1').term;
  c.crash('n2');
  c.loseStorageAfter('n2', c.get('n1').lastIndex, term);
  const n2 = c.get('n2');
  t.true(n2.rejoining);
  t.is(n2.term, term + 1, 'one term past the highest it may have reached');
  t.is(n2.votedFor, 'n2');
  // Alone with n2 for a long time: nobody can be elected (n3 needs n2's vote, n2 does not campaign).
  c.crash('n1');
  const since = c.delivered.length;
  c.tick(300);
  t.deepEqual(c.leaders(), []);
  t.true(
    c.delivered.slice(since).every((m) => !(m.from === 'n2' && (m.type === 'vote' || m.type === 'preVote'))),
    'n2 never asked for a vote',
  );
  t.true(
    c.delivered
      .slice(since)
      .filter((m) => m.from === 'n2' && (m.type === 'voteResp' || m.type === 'preVoteResp'))
      .every((m) => m.reject === true),
    'and granted none',
  );
  t.true(
    c.delivered.slice(since).some((m) => m.from === 'n2' && m.type === 'preVoteResp'),
    'although n3 asked',
  );
  t.true(c.get('n2').rejoining);
  // n1 returns: a leader is elected without n2, whose no-op (a later term) ends the rejoin.
  c.restart('n1');
  c.tick(100);
  const [leader] = c.leaders();
  t.truthy(leader);
  t.true(c.get(leader!).term >= term + 1, 'elected in a term past the one n2 restarted in');
  t.false(c.get('n2').rejoining, 'caught up: it holds an entry of its rejoin term');
});

test('lost storage: a rejoining member ignores a leadership transfer to it', (t) => {
  const c = new Cluster(ids(3));
  c.campaign('n1');
  const term = c.get('n1').term;
  c.crash('n2');
  c.loseStorageAfter('n2', c.get('n1').lastIndex, term);
  const n2 = c.get('n2');
  n2.step({ type: 'timeoutNow', from: 'n1', to: 'n2', term: n2.term });
  t.is(n2.role, 'follower');
  t.false(n2.hasReady() && n2.ready().messages.some((m) => m.type === 'vote'), 'no campaign');
});

test('lost storage: a member that lost an acknowledged entry cannot help elect a leader without it; the broken variant that votes at once loses it', (t) => {
  for (const rejoin of [true, false]) {
    const c = new Cluster(ids(3), {}, 7);
    c.campaign('n1');
    c.isolate('n3'); // n3 misses 'a': it is committed on n1 and n2 only
    const before = c.get('n1').lastIndex;
    const at = c.propose('n1', 'a');
    t.is(c.get('n1').commitIndex, at.index);
    const term = c.get('n2').term;
    // n2's storage loses 'a' (and the acknowledgement it sent for it); n1, the only other holder, goes down.
    c.crash('n2');
    c.loseStorageAfter('n2', before, term, rejoin);
    c.crash('n1');
    c.heal();
    c.tick(300);
    if (!rejoin) {
      // The broken variant: n2 and n3 elect a leader between them (their logs are alike), whose no-op
      // takes a's index: the group commits another entry where a was committed.
      t.is(c.leaders().length, 1, 'the unsafe variant elects a leader without the committed entry');
      const leader = c.leaders()[0]!;
      t.not(c.get(leader).termAt(at.index), at.term, "the new leader's log has another entry there");
      c.propose(leader, 'b');
      t.true(c.get('n3').commitIndex >= at.index);
      t.deepEqual(c.appliedData('n3'), ['b'], 'the group went on without a: an acknowledged write lost');
      continue;
    }
    t.deepEqual(c.leaders(), [], 'no leader can be elected without a member that holds the entry');
    c.restart('n1');
    c.tick(100);
    t.is(c.leaders().length, 1);
    c.propose(c.leaders()[0]!, 'b');
    for (const id of ids(3)) t.deepEqual(c.appliedData(id), ['a', 'b'], `${id} applied a and b`);
    t.false(c.get('n2').rejoining);
    // Caught up, n2 counts again: without n1, n2 and n3 elect a leader, and it has everything.
    c.crash('n1');
    c.tick(300);
    const [leader] = c.leaders();
    t.truthy(leader, 'n2 votes again once caught up');
    c.propose(leader!, 'c');
    t.deepEqual(c.appliedData('n3'), ['a', 'b', 'c']);
    t.deepEqual(c.appliedData('n2'), ['a', 'b', 'c']);
  }
});

test('unsafe.commitWithoutMajority commits on the leader alone (the broken variant the simulator must catch)', (t) => {
  const c = new Cluster(ids(3), { unsafe: { commitWithoutMajority: true } });
  c.campaign('n1');
  c.isolate('n1');
  const at = c.propose('n1', 'alone');
  t.is(c.get('n1').commitIndex, at.index);
});

test('quorum: committedIndex agrees with a naive majority count', (t) => {
  fc.assert(
    fc.property(fc.array(fc.nat(50), { minLength: 1, maxLength: 9 }), (matches) => {
      const voters = matches.map((_, i) => `v${i}`);
      const matchOf = (id: NodeId) => matches[Number(id.slice(1))]!;
      return committedIndex(voters, matchOf) === naiveCommittedIndex(voters, matchOf);
    }),
  );
  t.pass();
});

test('MemoryStorage: append replaces a conflicting suffix, compact keeps the term and membership', (t) => {
  const e = (
    index: number,
    term: number,
    type: Entry['type'] = 'normal',
    data: Buffer = Buffer.alloc(0),
  ): Entry => ({
    index,
    term,
    type,
    data,
  });
  const s = new MemoryStorage(['a', 'b']);
  s.append([e(1, 1), e(2, 1), e(3, 1)]);
  s.append([e(2, 2)]);
  t.is(s.lastIndex(), 2, 'everything after a replaced entry goes');
  t.is(s.term(2), 2);
  t.throws(() => s.append([e(5, 2)]), { instanceOf: RangeError }, 'no gaps');
  s.append([e(3, 2, 'conf', encodeConfChange({ op: 'add', id: 'c' })), e(4, 2)]);
  s.compact(3, Buffer.from('sm'));
  t.deepEqual(s.snapshot().meta, { index: 3, term: 2, members: ['a', 'b', 'c'] });
  t.is(s.firstIndex(), 4);
  t.throws(() => s.entries(3, 5), { instanceOf: CompactedError });
  t.is(s.term(3), 2, 'the snapshot index keeps its term');
  t.deepEqual(
    s.entries(4, 5).map((x) => x.index),
    [4],
  );
  t.false(
    s.applySnapshot({ meta: { index: 2, term: 1, members: [] }, data: Buffer.alloc(0) }),
    'older: ignored',
  );
  t.true(s.applySnapshot({ meta: { index: 9, term: 3, members: ['a'] }, data: Buffer.alloc(0) }));
  t.is(s.lastIndex(), 9);
  t.deepEqual(s.initialState().members, ['a']);
});

test('append messages stay under maxBytesPerMessage (at least one entry each), so frames stay within the limit', (t) => {
  const c = new Cluster(['a', 'b', 'c'], { maxBytesPerMessage: 1000 });
  c.campaign('a');
  c.cutLink('a', 'b'); // b falls behind, then catches up in capped messages
  for (let i = 0; i < 6; i++) c.get('a').propose(Buffer.alloc(400, i));
  c.stabilize();
  c.heal();
  c.delivered = [];
  c.tick(3);
  const appends = c.delivered.filter(
    (m) => m.type === 'append' && m.to === 'b' && (m.entries?.length ?? 0) > 0,
  );
  t.true(appends.length >= 3, `${appends.length} appends`);
  for (const m of appends) {
    const bytes = m.entries!.reduce((n, e) => n + e.data.length, 0);
    t.true(m.entries!.length === 1 || bytes <= 1000, `${m.entries!.length} entries, ${bytes} bytes`);
  }
  t.is(c.get('b').commitIndex, c.get('a').commitIndex);
});

test('a leader counts its own entry toward the majority only once it is durable (appends may leave before its fsync)', (t) => {
  const c = new Cluster(['a', 'b', 'c']);
  c.campaign('a');
  const a = c.get('a');
  const b = c.get('b');
  const { index } = a.propose(Buffer.from('x'));
  // The leader's Ready: its appends may go out now, while its own write is still in flight.
  const rd = a.ready();
  t.true(rd.entries.some((e) => e.index === index));
  const append = rd.messages.find((m) => m.type === 'append' && m.to === 'b')!;
  b.step(append);
  const brd = b.ready();
  c.nodes.get('b')!.storage.append(brd.entries); // b's copy is durable before it answers
  b.advance();
  const ack = brd.messages.find((m) => m.type === 'appendResp')!;
  a.step(ack);
  t.true(
    a.commitIndex < index,
    'one durable copy (b) of three is not a majority: the leader own copy is not durable yet',
  );
  c.nodes.get('a')!.storage.append(rd.entries);
  a.advance();
  t.is(a.commitIndex, index, 'once the leader copy is durable too, two of three: committed');
});

test('early(): while a Ready is being persisted, new commits and a leader appends go ahead of it', (t) => {
  const c = new Cluster(['a', 'b', 'c']);
  c.campaign('a');
  const a = c.get('a');
  const first = a.propose(Buffer.from('x'));
  const rd = a.ready(); // the leader's fsync of x is "in flight" from here on
  t.deepEqual(a.early(), { committed: [], messages: [] }, 'nothing new yet');
  // A proposal made meanwhile: its appends may leave at once, without waiting for the outstanding Ready.
  const second = a.propose(Buffer.from('y'));
  const early = a.early();
  t.true(early.messages.length > 0);
  t.true(early.messages.every((m) => m.type === 'append'));
  t.true(early.messages.every((m) => m.entries!.some((e) => e.index === second.index)));
  // Both followers store x and y durably and answer: a majority without the leader's own copy.
  for (const id of ['b', 'c']) {
    const f = c.get(id);
    for (const m of [...rd.messages, ...early.messages].filter((m) => m.to === id)) f.step(m);
    const frd = f.ready();
    c.nodes.get(id)!.storage.append(frd.entries);
    f.advance();
    for (const m of frd.messages) if (m.to === 'a') a.step(m);
  }
  const committed = a.early().committed.map((e) => e.index);
  t.deepEqual(
    committed,
    [first.index, second.index],
    'committed on b and c: applied before the leader fsync ends',
  );
  c.nodes.get('a')!.storage.append(rd.entries);
  a.advance();
  t.true(a.appliedIndex >= second.index, 'advance() never moves applied back');
  c.stabilize();
  t.false(
    c.nodes.get('a')!.applied.some((e) => e.index === first.index || e.index === second.index),
    'entries handed out by early() are not handed out again by ready()',
  );
});

test('coalesceAppendAcks: of several successful append answers to one leader in one term, the highest goes', (t) => {
  const ack = (to: string, term: number, hintIndex: number, reject = false): Message => ({
    type: 'appendResp',
    from: 'f',
    to,
    term,
    hintIndex,
    ...(reject ? { reject: true, logIndex: hintIndex } : {}),
  });
  const vote: Message = { type: 'voteResp', from: 'f', to: 'a', term: 3 };
  const msgs = [ack('a', 3, 5), vote, ack('a', 3, 9), ack('a', 3, 7, true), ack('b', 4, 2), ack('a', 3, 8)];
  t.deepEqual(coalesceAppendAcks(msgs), [vote, ack('a', 3, 9), ack('a', 3, 7, true), ack('b', 4, 2)]);
  const one = [ack('a', 3, 5), vote];
  t.is(coalesceAppendAcks(one), one, 'nothing to merge: the same array');
});
