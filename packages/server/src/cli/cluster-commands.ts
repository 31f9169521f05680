/** `segmem status` and `segmem cluster list|add|remove`: where the members stand, and who they are. */
import { SegmemError, type StatusOk } from '@segmem/protocol';
import { adminCall, memberStatus, reasonOf } from './admin-client.js';
import { UsageError } from './args.js';
import {
  CONNECTION_OPTIONS,
  type Command,
  connectionOf,
  escapeText,
  formatBytes,
  hostPort,
  JSON_OPTION,
  json,
  out,
  table,
} from './common.js';

interface MemberRow {
  id: string;
  address: string | null;
  status: StatusOk | null;
  /** Why it did not answer. */
  error: string | null;
  /** Entries behind the leader's commit index (applied), or, for a member that did not answer, behind
   * the leader's last entry as the leader last heard from it. */
  lag: number | null;
}

export const status: Command = {
  name: 'status',
  args: [],
  summary: "every member's role, term, indexes, lag, disk use, sessions and locks",
  description: `Asks every member of the cluster where it stands: each address given, then every member
    the answers name (so one address is enough). Any member answers, follower or leader. Prints one line per
    member: id, address, role, term, commit index, applied index, lag (how many committed entries it has
    not applied yet, behind the leader's commit index; for a member that does not answer, how far behind
    the leader's log the leader last knew it), WAL size, snapshot size on disk and the index of the newest
    snapshot, sessions, objects and locked objects; then the objects locked now, with their mode, holders
    and waiters. Exits 0 when every member answered and one of them leads; 1 when a member is down or no
    member leads, after printing what it found, with one line on stderr saying which.`,
  options: [JSON_OPTION, ...CONNECTION_OPTIONS],
  async run(p) {
    const conn = connectionOf(p);
    const ask = (address: string) =>
      memberStatus(address, conn).then(
        (s) => ({ address, status: s, error: null }),
        (err: unknown) => ({
          address,
          status: null,
          error: reasonOf(err),
          code: SegmemError.is(err) ? err.code : null,
        }),
      );
    // The addresses given, then the members their answers name that were not asked yet.
    const answers = await Promise.all(conn.servers.map(ask));
    const known = new Set(conn.servers);
    const more = new Set<string>();
    for (const a of answers)
      for (const [, address] of a.status?.members ?? [])
        if (address && !known.has(address)) more.add(address);
    answers.push(...(await Promise.all([...more].map(ask))));
    const up = answers.filter((a) => a.status !== null) as { address: string; status: StatusOk }[];
    // Every member answered, refusing the credential: that is not a member down.
    if (answers.every((a) => a.status === null && a.code === 'UNAUTHORIZED'))
      throw new SegmemError(
        'UNAUTHORIZED',
        `${answers[0]!.error} (${answers.map((a) => a.address).join(', ')})`,
      );
    if (up.length === 0) {
      throw new SegmemError(
        'UNAVAILABLE',
        `no member answered within ${conn.timeoutMs} ms: ${answers.map((a) => `${a.address} (${a.error})`).join(', ')}`,
      );
    }
    // The leader of the highest term any member reports speaks for the membership.
    const leaders = up
      .filter((a) => a.status.role === 'leader')
      .sort((a, b) => b.status.term - a.status.term);
    const leader = leaders[0] ?? null;
    const membership =
      leader?.status.members ?? up.sort((a, b) => b.status.term - a.status.term)[0]!.status.members;
    const rows: MemberRow[] = [];
    for (const [id, address] of membership) {
      const answer = up.find((a) => a.status.serverId === id);
      const failed = answers.find((a) => a.status === null && a.address === address);
      rows.push({
        id,
        address: answer?.address ?? address,
        status: answer?.status ?? null,
        error: answer ? null : (failed?.error ?? (address ? 'not asked' : 'address unknown')),
        lag: null,
      });
    }
    // Answers from servers the membership does not name (a removed member, another cluster's server).
    for (const a of up) {
      if (!rows.some((r) => r.id === a.status.serverId))
        rows.push({ id: a.status.serverId, address: a.address, status: a.status, error: null, lag: null });
    }
    for (const a of answers) {
      if (a.status === null && !rows.some((r) => r.address === a.address))
        rows.push({ id: '?', address: a.address, status: null, error: a.error, lag: null });
    }
    const lead = leader?.status;
    for (const r of rows) {
      if (r.status && lead) r.lag = Math.max(0, lead.commitIndex - r.status.appliedIndex);
      else if (!r.status && lead) {
        const match = lead.progress.find(([id]) => id === r.id)?.[1];
        if (match !== undefined) r.lag = Math.max(0, lead.lastIndex - match);
      }
    }
    const down = rows.filter((r) => !r.status);
    const outsiders = rows.filter((r) => r.status && !membership.some(([id]) => id === r.id));
    const problems: string[] = [];
    if (!lead) problems.push('no member leads');
    if (down.length > 0)
      problems.push(
        `${down.length} of ${membership.length} member${membership.length === 1 ? '' : 's'} down: ${down.map((r) => `${r.id}${r.address ? ` at ${r.address}` : ''} (${r.error})`).join(', ')}`,
      );
    const clusterId = (lead ?? up[0]!.status).clusterId;
    const locks = (lead ?? up[0]!.status).locks;
    const group = (lead ?? up[0]!.status).group;
    if (p.flags.has('json')) {
      await json({
        clusterId,
        ...(group ? { group } : {}),
        leader: lead?.serverId ?? null,
        term: lead?.term ?? null,
        healthy: problems.length === 0,
        problems,
        members: rows.map((r) => ({
          id: r.id,
          address: r.address,
          up: r.status !== null,
          error: r.error,
          lag: r.lag,
          member: !outsiders.includes(r),
          ...(r.status ? memberJson(r.status) : {}),
        })),
        locks: locks.map(([name, mode, holders, waiting]) => ({ name, mode, holders, waiting })),
        lockedObjects: (lead ?? up[0]!.status).lockedObjects,
      });
    } else {
      // A cluster without groups is group 0, the whole segment: its line stays as it was.
      const groupNote =
        group && group.id !== 0
          ? ` group ${group.id} (bytes ${group.start}..${group.start + group.bytes - 1})`
          : '';
      let text = `cluster ${clusterId}${groupNote}, ${lead ? `leader ${lead.serverId} in term ${lead.term}` : 'no leader'}, ${membership.length - down.length} of ${membership.length} member${membership.length === 1 ? '' : 's'} up\n`;
      text += table([
        [
          'ID',
          'ADDRESS',
          'ROLE',
          'TERM',
          'COMMIT',
          'APPLIED',
          'LAG',
          'WAL',
          'SNAPSHOT',
          'SESSIONS',
          'OBJECTS',
          'LOCKED',
        ],
        ...rows.map((r) => {
          const s = r.status;
          const lag = r.lag === null ? '-' : String(r.lag);
          if (!s) return [r.id, r.address ?? '?', 'down', '-', '-', '-', lag, '-', '-', '-', '-', '-'];
          return [
            r.id,
            r.address ?? '?',
            outsiders.includes(r) ? `${s.role} (not a member)` : s.role,
            String(s.term),
            String(s.commitIndex),
            String(s.appliedIndex),
            lag,
            formatBytes(s.walBytes),
            s.snapshotFiles > 0 ? `${formatBytes(s.snapshotBytes)} @${s.snapshotIndex}` : 'none',
            String(s.sessions),
            String(s.objects),
            String(s.lockedObjects),
          ];
        }),
      ]);
      for (const r of down) text += `${r.id} is down: ${r.error}\n`;
      if (lead?.writesHeldMs !== undefined)
        text += `writes held for a snapshot cut (BARRIER): they wait, at most ${lead.writesHeldMs} ms more\n`;
      if (locks.length > 0) {
        const total = (lead ?? up[0]!.status).lockedObjects;
        text += `locked objects${total > locks.length ? ` (first ${locks.length} of ${total})` : ''}:\n`;
        text += table([
          ['MODE', 'HOLDERS', 'WAITING', 'NAME'],
          ...locks.map(([name, mode, holders, waiting]) => [
            mode,
            String(holders),
            String(waiting),
            escapeText(name),
          ]),
        ]);
      }
      await out(text);
    }
    if (problems.length === 0) return 0;
    process.stderr.write(`segmem: ${problems.join('; ')} (UNAVAILABLE)\n`);
    return 1;
  },
};

function memberJson(s: StatusOk) {
  return {
    role: s.role,
    leaderKnown: s.leader,
    term: s.term,
    commitIndex: s.commitIndex,
    appliedIndex: s.appliedIndex,
    lastIndex: s.lastIndex,
    walFiles: s.walFiles,
    walBytes: s.walBytes,
    snapshotFiles: s.snapshotFiles,
    snapshotBytes: s.snapshotBytes,
    snapshotIndex: s.snapshotIndex,
    sessions: s.sessions,
    objects: s.objects,
    logs: s.logs,
    lockedObjects: s.lockedObjects,
    fsync: s.fsync,
    ...(s.group ? { group: s.group } : {}),
    ...(s.writesHeldMs !== undefined ? { writesHeldMs: s.writesHeldMs } : {}),
  };
}

const CLUSTER_DESCRIPTION = `The group's membership changes one server at a time. The command finds the
  leader through the addresses given, runs one request there and prints the group: its cluster id, then one
  line per member, "ID ADDRESS", the leader marked "leader".`;

async function membership(
  p: Parameters<Command['run']>[0],
  op: 'list' | 'add' | 'remove',
  id: string | null,
  address: string | null,
): Promise<undefined> {
  const conn = connectionOf(p);
  let r: Awaited<ReturnType<typeof adminCall<'MEMBERSHIP'>>>;
  try {
    r = await adminCall(conn, { type: 'MEMBERSHIP', op, id, address });
  } catch (err) {
    // A leader that removes itself steps down as the change commits and may drop the connection before
    // answering; the retry then finds the change done. Show the membership instead of an error.
    const retried = SegmemError.is(err) && err.details?.retried === true;
    const done = retried && /is not a member|is already a member/.test((err as Error).message);
    if (!done) throw err;
    r = await adminCall(conn, { type: 'MEMBERSHIP', op: 'list', id: null, address: null });
  }
  if (p.flags.has('json')) {
    await json({
      clusterId: r.clusterId,
      leader: r.leader,
      members: r.members.map(([member, addr]) => ({ id: member, address: addr })),
    });
    return;
  }
  let text = `cluster ${r.clusterId}\n`;
  for (const [member, addr] of r.members)
    text += `${member} ${addr ?? '?'}${member === r.leader ? ' leader' : ''}\n`;
  await out(text);
  return;
}

const SERVER_ID = /^[A-Za-z0-9._-]{1,64}$/;

function serverId(value: string): string {
  if (!SERVER_ID.test(value))
    throw new UsageError(`ID must be 1..64 characters of [A-Za-z0-9._-]; got ${JSON.stringify(value)}`, null);
  return value;
}

export const clusterList: Command = {
  name: 'cluster list',
  args: [],
  summary: "the group's members and its leader",
  description: CLUSTER_DESCRIPTION,
  options: [JSON_OPTION, ...CONNECTION_OPTIONS],
  run: (p) => membership(p, 'list', null, null),
};

export const clusterAdd: Command = {
  name: 'cluster add',
  args: [{ name: 'ID' }, { name: 'HOST:PORT' }],
  summary: 'add server ID, started with --join, to the group',
  description: `Adds the server ID, listening at HOST:PORT (where the members reach it), to the group; start
    it first with segmem-server --join and the group's --cluster-id. Answers once the change is committed.
    ${CLUSTER_DESCRIPTION}`,
  options: [JSON_OPTION, ...CONNECTION_OPTIONS],
  run: (p) => {
    return membership(p, 'add', serverId(p.args[0]!), hostPort(p.args[1]!, 'HOST:PORT'));
  },
};

export const clusterRemove: Command = {
  name: 'cluster remove',
  args: [{ name: 'ID' }],
  summary: 'remove server ID from the group',
  description: `Removes the server ID from the group; stop it afterwards. A leader that removes itself leads
    until the change commits, then steps down. ${CLUSTER_DESCRIPTION}`,
  options: [JSON_OPTION, ...CONNECTION_OPTIONS],
  run: (p) => membership(p, 'remove', serverId(p.args[0]!), null),
};

export const clusterSlots: Command = {
  name: 'cluster slots',
  args: [],
  summary: 'the slot table: which shard group owns each hash slot, and its servers',
  description: `Asks the leader reached through the addresses given for the cluster's slot table (SLOTS):
    which shard group owns each of the 16384 hash slots a name hashes to, and the servers of each group.
    Prints the table's version and the group the answering server belongs to, then one line per range of
    slots, "FIRST-LAST GROUP", then one line per group, "GROUP ID ADDRESS ..." (its servers as the table
    lists them; "-" for none: a single group is reached at the addresses given).`,
  options: [JSON_OPTION, ...CONNECTION_OPTIONS],
  async run(p) {
    const r = await adminCall(connectionOf(p), { type: 'SLOTS' });
    const { version, ranges, groups } = r.table;
    if (p.flags.has('json')) {
      await json({
        clusterId: r.clusterId,
        groupId: r.groupId,
        version,
        ranges: ranges.map(([first, last, group]) => ({ first, last, group })),
        groups: groups.map((g) => ({
          id: g.id,
          members: g.members.map(([id, address]) => ({ id, address })),
        })),
      });
      return 0;
    }
    let text = `cluster ${r.clusterId}, slot table version ${version}, answered by group ${r.groupId}\n`;
    text += table([
      ['SLOTS', 'GROUP'],
      ...ranges.map(([first, last, group]) => [`${first}-${last}`, String(group)]),
    ]);
    text += table([
      ['GROUP', 'SERVERS'],
      ...groups.map((g) => [
        String(g.id),
        g.members.length === 0 ? '-' : g.members.map(([id, address]) => `${id} ${address}`).join(', '),
      ]),
    ]);
    await out(text);
    return 0;
  },
};
