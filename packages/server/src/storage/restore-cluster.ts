/**
 * `segmem restore FILE --config C --id sN --dir D`: builds server sN's data directory from a cluster
 * snapshot file (cluster-file.ts). When C's groups have the file's ids and ranges, sN's group gets its own
 * part, slot table included (with C's member addresses). Otherwise every object and shared log is placed
 * anew by its name's slot into C's groups (the initial slot table of C): an object keeps its bytes,
 * version, page versions and token floor, and is given an address in its new group's range and an id in
 * that group.
 */
import { promises as fsp } from 'node:fs';
import { initialSlotTable, ownerOf, SegmemError, type SlotTable, slotOf } from '@segmem/protocol';
import { groupOf, type ServerConfig } from '../config.js';
import type { StateContent } from '../core/state-machine.js';
import { type ClusterFile, decodeClusterFile, isClusterFile } from './cluster-file.js';
import { decodeConsolidated } from './consolidated.js';
import { requireFreshDir, writeDataDirs } from './restore.js';

export interface ClusterRestoreOptions {
  config: ServerConfig;
  /** The config file's name, for messages. */
  configFile: string;
  id: string;
  dir: string;
  /** The restored cluster's id; default: the config's, else the file's (every member must agree). */
  clusterId?: string;
  onProgress?: (step: string) => void;
}

export interface ClusterRestore {
  clusterId: string;
  group: number;
  /** How the content was placed: the group's own part, or re-placed by slot. */
  placement: 'same-groups' | 'by-slot';
  objects: number;
  logs: number;
}

export async function restoreClusterMember(
  file: string,
  opts: ClusterRestoreOptions,
): Promise<ClusterRestore> {
  const { config, id } = opts;
  const group = groupOf(config, id, opts.configFile);
  await requireFreshDir(opts.dir);
  let bytes: Buffer;
  try {
    opts.onProgress?.(`reading ${file}`);
    bytes = await fsp.readFile(file);
  } catch (err) {
    throw new SegmemError('NOT_FOUND', `cannot read ${file}: ${(err as Error).message}`);
  }
  const members = Object.keys(group.members).length > 1 ? Object.keys(group.members).sort() : [];
  if (!isClusterFile(bytes)) {
    // A single group's file restores a cluster without groups, as its one group.
    if (config.groups)
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `${file} is one group's snapshot, not a cluster snapshot: ${opts.configFile} has shard groups (restore it with --data)`,
      );
    const snap = decodeConsolidated(bytes, file);
    if (snap.content.group && snap.content.group.id !== 0)
      throw new SegmemError(
        'INVALID_ARGUMENT',
        `${file} is shard group ${snap.content.group.id}'s snapshot; ${opts.configFile} has no groups`,
      );
    fits(snap.content.pageBytes, snap.content.segmentBytes, file, opts);
    const clusterId = opts.clusterId ?? config.clusterId ?? snap.header.clusterId;
    await writeDataDirs(snap.content, [opts.dir], [id], clusterId, members, opts.onProgress);
    const c = snap.content;
    return { clusterId, group: 0, placement: 'same-groups', objects: c.objects.length, logs: c.logs.length };
  }
  const cluster = decodeClusterFile(bytes, file);
  const h = cluster.header;
  fits(h.pageBytes, h.segmentBytes, file, opts);
  const clusterId = opts.clusterId ?? config.clusterId ?? h.clusterId;
  const groups = config.groups ?? [{ id: 0, start: 0, bytes: config.segmentBytes, members: config.servers }];
  const sameGroups =
    groups.length === h.groups.length &&
    groups.every((g) => h.groups.some((f) => f.id === g.id && f.start === g.start && f.bytes === g.bytes));
  let content: StateContent;
  if (sameGroups) {
    const i = h.groups.findIndex((f) => f.id === group.id);
    const part = ownedContent(cluster.parts[i]!.content, h.slots, group.id);
    // The slot table as it was (slots moved since the config was written stay moved), at the config's addresses.
    const slotTable: SlotTable = {
      ...h.slots,
      groups: groups.map((g) => ({ id: g.id, members: Object.entries(g.members) })),
    };
    content = { ...part, slotTable };
  } else {
    const table = initialSlotTable(groups.map((g) => ({ id: g.id, members: Object.entries(g.members) })));
    content = placeBySlot(cluster, table, group, file);
  }
  await writeDataDirs(content, [opts.dir], [id], clusterId, members, opts.onProgress);
  return {
    clusterId,
    group: group.id,
    placement: sameGroups ? 'same-groups' : 'by-slot',
    objects: content.objects.length,
    logs: content.logs.length,
  };
}

/**
 * `content` without the objects and logs whose slot `table` (the cut's: the newest of the groups') gives
 * to another group: copies a slot move had imported into a group before its switch, or left in the
 * source after it. Each name is then in exactly one group's part.
 */
function ownedContent(content: StateContent, table: SlotTable, groupId: number): StateContent {
  const owned = (name: string) => ownerOf(table, slotOf(name)) === groupId;
  return {
    ...content,
    objects: content.objects.filter((o) => owned(o.name)),
    logs: content.logs.filter((l) => owned((l as [string])[0])),
  };
}

/** Refuses a file whose page or segment size is not the config's. */
function fits(pageBytes: number, segmentBytes: number, file: string, opts: ClusterRestoreOptions): void {
  const c = opts.config;
  if (pageBytes !== c.pageBytes || segmentBytes !== c.segmentBytes)
    throw new SegmemError(
      'INVALID_ARGUMENT',
      `${file} holds a segment of ${segmentBytes} bytes in pages of ${pageBytes}; ${opts.configFile} has ${c.segmentBytes} in pages of ${c.pageBytes}`,
    );
}

/**
 * The content group `group` gets when every object and log of `cluster` goes to the group `table` gives
 * its name's slot: objects placed one after another from the start of the group's range (in the order of
 * the file's groups and their objects), ids from 1. NO_SPACE when they do not fit in the range.
 */
function placeBySlot(
  cluster: ClusterFile,
  table: SlotTable,
  group: { id: number; start: number; bytes: number },
  file: string,
): StateContent {
  const first = cluster.parts[0]!.content;
  const pb = first.pageBytes;
  const mine = (name: string) => ownerOf(table, slotOf(name)) === group.id;
  const objects: StateContent['objects'] = [];
  const logs: unknown[] = [];
  let page = group.start / pb;
  const endPage = (group.start + group.bytes) / pb;
  let nextSessionId = 1;
  for (const [i, part] of cluster.parts.entries()) {
    const c = ownedContent(part.content, cluster.header.slots, cluster.header.groups[i]!.id);
    nextSessionId = Math.max(nextSessionId, c.nextSessionId);
    for (const o of c.objects) {
      if (!mine(o.name)) continue;
      const pages = Math.ceil(o.size / pb);
      if (page + pages > endPage)
        throw new SegmemError(
          'NO_SPACE',
          `${file}: the objects of group ${group.id}'s slots need more than its ${group.bytes} bytes (at "${o.name}")`,
        );
      objects.push({ ...o, id: objects.length + 1, firstPage: page });
      page += pages;
    }
    for (const log of c.logs) if (mine((log as [string])[0])) logs.push(log);
  }
  return {
    pageBytes: pb,
    segmentBytes: first.segmentBytes,
    nextObjectId: objects.length + 1,
    nextSessionId,
    objects,
    logs,
    // Each group holds its own users: the first group's are kept.
    ...(first.users ? { users: first.users } : {}),
    group: { id: group.id, start: group.start, bytes: group.bytes },
    slotTable: table,
  };
}
