/**
 * `segmem cluster rebalance | move-slots | add-group | remove-group`: moving hash slots between the shard
 * groups of a config file while clients keep working (the driver is rebalance.ts).
 */
import { SegmemError, SLOT_COUNT, type SlotTable } from '@segmem/protocol';
import { loadConfigFile } from '../config.js';
import type { OptionSpec, Parsed } from './args.js';
import { UsageError } from './args.js';
import { CONNECTION_OPTIONS, type Command, connectionOf, formatBytes, out } from './common.js';
import {
  DRAIN_WAIT_MS,
  drainPlans,
  evenSpreadPlans,
  groupSessions,
  type MovePlan,
  Rebalancer,
  type StopAfter,
} from './rebalance.js';

const CONFIG_OPTION: OptionSpec = {
  name: 'config',
  value: 'FILE',
  help: "the cluster's config file (segmem.json): its groups and their servers",
};
const DRAIN_OPTION: OptionSpec = {
  name: 'drain-wait',
  value: 'MS',
  help: 'how long to wait for holders of the moving objects to give them back',
  default: String(DRAIN_WAIT_MS),
};
const GROUP_OPTION: OptionSpec = {
  name: 'group',
  value: 'N',
  help: 'the shard group (its id in the config file)',
};
/** The connection options but --servers: the servers come from the config file. */
const OPTIONS = [CONFIG_OPTION, DRAIN_OPTION, ...CONNECTION_OPTIONS.filter((o) => o.name !== 'servers')];

const MOVE_DESCRIPTION = `Each move freezes the slots in the group that owns them (new creates, deletes,
    acquires and log appends on their names wait; holders finish), copies their objects and shared logs to the
    other group in chunks, then installs the new slot table in the receiving group, the giving group and every
    other group; clients waiting on the moved names are redirected (MOVED). A move that an earlier run left
    half done (a crash of the command or of a leader) is finished, or rolled back when the receiving group
    never took it, before anything else: run the command again. Prints one line per step with the objects,
    bytes and MiB/s copied. Exits 0 when every move is done.`;

function configOf(p: Parsed) {
  const file = p.values.get('config');
  if (file === undefined) throw new UsageError('--config FILE is required', null);
  const config = loadConfigFile(file);
  if (!config.groups)
    throw new SegmemError('INVALID_ARGUMENT', `${file} has no groups: there is nothing to move between`);
  return { file, groups: config.groups, token: config.token ?? null };
}

function groupArg(p: Parsed, ids: number[], file: string): number {
  const value = p.values.get('group');
  if (value === undefined) throw new UsageError('--group N is required', null);
  const id = Number(value);
  if (!Number.isInteger(id) || !ids.includes(id))
    throw new UsageError(
      `--group must be a group of ${file} (${ids.join(', ')}); got ${JSON.stringify(value)}`,
      null,
    );
  return id;
}

/** Opens a session per group, runs `work`, prints the result line; resumes earlier moves first. */
async function drive(
  p: Parsed,
  work: (r: Rebalancer, table: SlotTable, ids: number[]) => Promise<MovePlan[]>,
): Promise<number> {
  const { groups, token } = configOf(p);
  const base = connectionOf({
    ...p,
    lists: new Map([...p.lists, ['servers', Object.values(groups[0]!.members)]]),
  });
  const drain = p.values.get('drain-wait');
  const drainWaitMs = drain === undefined ? DRAIN_WAIT_MS : Number(drain);
  if (!Number.isInteger(drainWaitMs) || drainWaitMs < 0)
    throw new UsageError(`--drain-wait must be milliseconds; got ${JSON.stringify(drain)}`, null);
  const stop = process.env.SEGMEM_REBALANCE_STOP_AFTER || null;
  if (stop !== null && stop !== 'freeze' && stop !== 'copy' && stop !== 'target-switch')
    throw new UsageError(
      `SEGMEM_REBALANCE_STOP_AFTER must be freeze, copy or target-switch; got ${stop}`,
      null,
    );
  const r = new Rebalancer(
    groupSessions(
      groups.map((g) => ({ id: g.id, members: Object.values(g.members) })),
      { ...base, token: base.token ?? token },
    ),
    { report: (line) => process.stdout.write(`${line}\n`), stopAfter: stop as StopAfter, drainWaitMs },
  );
  try {
    await r.resume();
    const ids = groups.map((g) => g.id);
    const table = await listGroups(r, await r.newestTable(), groups);
    const plans = await work(r, table, ids);
    await r.runAll(plans);
    const total = r.moved;
    const final = await r.newestTable();
    const spread = new Map<number, number>();
    for (const [first, last, g] of final.ranges) spread.set(g, (spread.get(g) ?? 0) + last - first + 1);
    const lines = [...spread].sort((a, b) => a[0] - b[0]).map(([g, n]) => `group ${g}: ${n} slots`);
    await out(
      `${total.slots === 0 ? 'no slot to move' : `moved ${total.slots} slots, ${total.objects} objects, ${formatBytes(total.bytes)}`}; slot table version ${final.version}\n${lines.join('\n')}\n`,
    );
    return 0;
  } finally {
    await r.close();
  }
}

/** The table listing every group of the config file (a group added to the file is listed, owning nothing). */
async function listGroups(
  r: Rebalancer,
  table: SlotTable,
  groups: { id: number; members: Record<string, string> }[],
): Promise<SlotTable> {
  const missing = groups.filter((g) => !table.groups.some((x) => x.id === g.id));
  if (missing.length === 0) return table;
  const listed: SlotTable = {
    version: table.version + 1,
    ranges: table.ranges,
    groups: [...table.groups, ...missing.map((g) => ({ id: g.id, members: Object.entries(g.members) }))],
  };
  await r.spreadTable(listed);
  return listed;
}

export const clusterRebalance: Command = {
  name: 'cluster rebalance',
  args: [],
  summary: "spread the hash slots evenly over the config file's groups",
  description: `Moves hash slots so that every group of the config file owns a contiguous run of nearly equal
    size, in order of group id (the table a new cluster of these groups would start with). ${MOVE_DESCRIPTION}`,
  options: OPTIONS,
  run: (p) => drive(p, async (_r, table, ids) => evenSpreadPlans(table, ids)),
};

export const clusterMoveSlots: Command = {
  name: 'cluster move-slots',
  args: [],
  summary: 'move a range of hash slots to one group',
  description: `Moves the hash slots FIRST-LAST (--slots) to group N (--group), from whichever groups own them.
    ${MOVE_DESCRIPTION}`,
  options: [
    { name: 'slots', value: 'FIRST-LAST', help: 'the slots to move (0..16383)' },
    GROUP_OPTION,
    ...OPTIONS,
  ],
  run: (p) =>
    drive(p, async (_r, table, ids) => {
      const to = groupArg(p, ids, p.values.get('config')!);
      const text = p.values.get('slots');
      const m = /^(\d+)-(\d+)$/.exec(text ?? '');
      const first = Number(m?.[1]);
      const last = Number(m?.[2]);
      if (!m || last < first || last >= SLOT_COUNT)
        throw new UsageError(
          `--slots must be FIRST-LAST within 0..${SLOT_COUNT - 1}; got ${JSON.stringify(text)}`,
          null,
        );
      const plans = new Map<number, MovePlan>();
      for (const [rf, rl, g] of table.ranges) {
        if (g === to || rl < first || rf > last) continue;
        let plan = plans.get(g);
        if (!plan) plans.set(g, (plan = { from: g, to, slots: [] }));
        plan.slots.push([Math.max(rf, first), Math.min(rl, last)]);
      }
      return [...plans.values()];
    }),
};

export const clusterAddGroup: Command = {
  name: 'cluster add-group',
  args: [],
  summary: 'give a group added to the config file its share of the hash slots',
  description: `Group N (--group) is in the config file, marked "joining": true, and its servers run (they
    started owning no slot). Lists it in every group's slot table, then spreads the slots evenly over all the
    groups of the file. ${MOVE_DESCRIPTION}`,
  options: [GROUP_OPTION, ...OPTIONS],
  run: (p) =>
    drive(p, async (r, table, ids) => {
      const id = groupArg(p, ids, p.values.get('config')!);
      await r.status(id); // its leader answers, or the command stops here
      return evenSpreadPlans(table, ids);
    }),
};

export const clusterRemoveGroup: Command = {
  name: 'cluster remove-group',
  args: [],
  summary: 'move every hash slot of a group to the other groups',
  description: `Moves every slot of group N (--group) to the other groups of the config file, spread evenly
    over them; the group then owns nothing and its servers can be stopped (remove it from the file after).
    ${MOVE_DESCRIPTION}`,
  options: [GROUP_OPTION, ...OPTIONS],
  run: (p) =>
    drive(p, async (_r, table, ids) => {
      const id = groupArg(p, ids, p.values.get('config')!);
      const owned = table.ranges.filter(([, , g]) => g === id).length;
      if (owned === 0) return [];
      return drainPlans(
        table,
        id,
        ids.filter((g) => g !== id),
      );
    }),
};
