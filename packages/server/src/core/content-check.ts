/**
 * Semantic checks of a state's durable content before it becomes a state machine: a snapshot whose
 * checksum matches can still be crafted or written by a buggy tool, and a state built from it would break
 * its invariants far from the cause (a session id NaN, two objects on one page, a name no API accepts).
 *
 * The rules are the state machine's own invariants:
 * - geometry: pageBytes is PAGE_BYTES; segmentBytes a multiple of it, 1 page..MAX_SEGMENT_BYTES;
 * - counters: nextObjectId and nextSessionId safe integers >= 1, nextObjectId above every object id;
 * - objects: ids unique safe integers >= 1; names valid API names (validateName) and unique across
 *   objects and logs; sizes 1..MAX_OBJECT_BYTES; pages inside the segment and not overlapping (an object
 *   is placed by its first page, so it is page-aligned by construction); version >= 1; every page version
 *   an integer 1..version; lastToken (the last fencing token granted) a safe integer >= 0; bytes, when
 *   present, exactly size long;
 * - logs: `[name, maxBytes, first, next, sizes, data]`; retention 1..MAX_LOG_MAX_BYTES; sequence numbers
 *   0 <= first <= next; one u32 size per retained record, each 0..MAX_LOG_RECORD_BYTES, adding up to data;
 * - users: `[name, salt, n, r, p, hash, rules]`, at most MAX_USERS, names valid (validateUserName) and
 *   unique; salt and hash of the right size in hex and scrypt costs in bounds (validatePasswordHash); at
 *   most MAX_RULES_PER_USER rules `[prefix, right]`, prefixes valid and unique, rights read|write|admin;
 * - group (when given): a range of the segment (groupRangeProblem) holding every object's pages; the slot
 *   table (when given) valid (validateSlotTable) and listing the group.
 *
 * A violation throws SegmemError('INVALID_ARGUMENT') with one line naming the field and the object or log,
 * and details { reason: 'BAD_SNAPSHOT', field }.
 */
import {
  describeValue,
  MAX_LOG_MAX_BYTES,
  MAX_LOG_RECORD_BYTES,
  MAX_OBJECT_BYTES,
  MAX_RULES_PER_USER,
  MAX_SEGMENT_BYTES,
  MAX_USERS,
  PAGE_BYTES,
  SegmemError,
  validateAclPrefix,
  validateName,
  validatePasswordHash,
  validateRight,
  validateSlotTable,
  validateStoredName,
  validateUserName,
} from '@segmem/protocol';
import { groupRangeProblem, wholeSegment } from './group-range.js';
import type { StateContent } from './state-machine.js';

export interface ContentCheckOptions {
  /** Starts each message: what was being loaded ("restore", "snapshot"). */
  what: string;
  /**
   * Accept names with control characters other than NUL (validateStoredName): for states a server wrote
   * itself before names were held to that rule. A restore from a file holds names to the API's rule.
   */
  storedNames?: boolean;
}

/** The error for a content that breaks a rule; `where` names the object or log ('' for the whole). */
export function badSnapshot(what: string, where: string, field: string, rule: string): SegmemError {
  return new SegmemError('INVALID_ARGUMENT', `${what}: ${where ? `${where}: ` : ''}${rule}`, {
    reason: 'BAD_SNAPSHOT',
    field,
  });
}

/** A name for a message: quoted and escaped, at most a few dozen characters, whatever it holds. */
export function nameLabel(name: unknown): string {
  if (typeof name !== 'string') return describeValue(name);
  return JSON.stringify(name.length > 60 ? `${name.slice(0, 60)}...` : name);
}

/** A value for a message: a number as itself, anything else described (never echoed whole). */
const show = (v: unknown): string => (typeof v === 'number' ? String(v) : describeValue(v));

const isSafeInt = (v: unknown, min: number): v is number =>
  typeof v === 'number' && Number.isSafeInteger(v) && v >= min;

/** Throws unless pageBytes and segmentBytes describe a segment a server can hold. */
export function checkGeometry(what: string, pageBytes: unknown, segmentBytes: unknown): void {
  if (pageBytes !== PAGE_BYTES)
    throw badSnapshot(what, '', 'pageBytes', `pageBytes ${show(pageBytes)} must be ${PAGE_BYTES}`);
  if (
    !isSafeInt(segmentBytes, PAGE_BYTES) ||
    segmentBytes % PAGE_BYTES !== 0 ||
    segmentBytes > MAX_SEGMENT_BYTES
  ) {
    throw badSnapshot(
      what,
      '',
      'segmentBytes',
      `segmentBytes ${show(segmentBytes)} must be a multiple of ${PAGE_BYTES} in ${PAGE_BYTES}..${MAX_SEGMENT_BYTES}`,
    );
  }
}

/** Throws unless `size` is an object size; a decoder calls it before allocating the object's bytes. */
export function checkObjectSize(what: string, id: unknown, name: unknown, size: unknown): void {
  if (!isSafeInt(size, 1) || size > MAX_OBJECT_BYTES) {
    throw badSnapshot(
      what,
      `object ${nameLabel(name)} (id ${show(id)})`,
      'size',
      `size ${show(size)} must be an integer 1..${MAX_OBJECT_BYTES}`,
    );
  }
}

function checkName(
  what: string,
  whereOf: (i: number) => string,
  i: number,
  name: unknown,
  storedNames: boolean,
): void {
  try {
    if (storedNames) validateStoredName(name);
    else validateName(name);
  } catch (err) {
    throw badSnapshot(what, whereOf(i), 'name', (err as Error).message);
  }
}

/** Throws (see the module comment) unless `content` can become a state machine's content. */
export function checkContent(content: StateContent, opts: ContentCheckOptions): void {
  const { what } = opts;
  const storedNames = opts.storedNames === true;
  checkGeometry(what, content.pageBytes, content.segmentBytes);
  const pageBytes = content.pageBytes;
  const totalPages = content.segmentBytes / pageBytes;
  for (const field of ['nextObjectId', 'nextSessionId'] as const) {
    const v = content[field];
    if (!isSafeInt(v, 1)) throw badSnapshot(what, '', field, `${field} ${show(v)} must be an integer >= 1`);
  }
  if (!Array.isArray(content.objects))
    throw badSnapshot(what, '', 'objects', `objects must be a list; got ${show(content.objects)}`);
  if (!Array.isArray(content.logs))
    throw badSnapshot(what, '', 'logs', `logs must be a list; got ${show(content.logs)}`);

  const objects = content.objects;
  // Messages are built only on failure: a server checks every snapshot it loads, some with 100k objects.
  const objectWhere = (i: number) => `object ${nameLabel(objects[i]?.name)} (id ${show(objects[i]?.id)})`;
  const logWhere = (i: number) => `log ${nameLabel((content.logs[i] as unknown[] | undefined)?.[0])}`;
  /** Name -> index of the object holding it, or -1 - index of the log. */
  const names = new Map<string, number>();
  const holderOf = (at: number) => (at >= 0 ? objectWhere(at) : logWhere(-1 - at));
  const ids = new Map<number, number>();
  let maxIdAt = -1;
  for (let i = 0; i < objects.length; i++) {
    const o = objects[i]!;
    const bad = (field: string, rule: string) => badSnapshot(what, objectWhere(i), field, rule);
    if (!isSafeInt(o.id, 1)) throw bad('id', `id ${show(o.id)} must be an integer >= 1`);
    const sameId = ids.get(o.id);
    if (sameId !== undefined) throw bad('id', `id ${o.id} is also the id of ${objectWhere(sameId)}`);
    ids.set(o.id, i);
    if (maxIdAt < 0 || o.id > objects[maxIdAt]!.id) maxIdAt = i;
    checkName(what, objectWhere, i, o.name, storedNames);
    const sameName = names.get(o.name);
    if (sameName !== undefined) throw bad('name', `the name is also the name of ${holderOf(sameName)}`);
    names.set(o.name, i);
    checkObjectSize(what, o.id, o.name, o.size);
    const pageCount = Math.ceil(o.size / pageBytes);
    if (!isSafeInt(o.firstPage, 0) || o.firstPage + pageCount > totalPages) {
      throw bad(
        'firstPage',
        `firstPage ${show(o.firstPage)} must be an integer 0..${totalPages - pageCount}, so that its ${pageCount} pages end inside the segment (${totalPages} pages)`,
      );
    }
    if (!isSafeInt(o.version, 1)) throw bad('version', `version ${show(o.version)} must be an integer >= 1`);
    const pv = o.pageVersions;
    if (!(pv instanceof Float64Array) || pv.length !== pageCount)
      throw bad('pageVersions', `pageVersions must list one version per page (${pageCount})`);
    for (let p = 0; p < pageCount; p++) {
      const v = pv[p]!;
      if (!Number.isSafeInteger(v) || v < 1 || v > o.version) {
        throw bad(
          'pageVersions',
          `page ${p}'s version ${v} must be an integer 1..${o.version} (the object's)`,
        );
      }
    }
    if (!isSafeInt(o.lastToken, 0))
      throw bad('lastToken', `lastToken ${show(o.lastToken)} must be an integer >= 0`);
    if (o.data !== null && (!Buffer.isBuffer(o.data) || o.data.length !== o.size))
      throw bad('data', `data must be null or ${o.size} bytes; got ${show(o.data)}`);
  }
  if (maxIdAt >= 0 && content.nextObjectId <= objects[maxIdAt]!.id) {
    throw badSnapshot(
      what,
      '',
      'nextObjectId',
      `nextObjectId ${content.nextObjectId} must be above every object id (the highest is ${objects[maxIdAt]!.id} of ${objectWhere(maxIdAt)})`,
    );
  }
  const pagesEnd = (o: StateContent['objects'][number]) => o.firstPage + Math.ceil(o.size / pageBytes);
  const byFirstPage = objects.map((_, i) => i).sort((x, y) => objects[x]!.firstPage - objects[y]!.firstPage);
  for (let k = 1; k < byFirstPage.length; k++) {
    const prev = objects[byFirstPage[k - 1]!]!;
    const cur = objects[byFirstPage[k]!]!;
    if (cur.firstPage < pagesEnd(prev)) {
      throw badSnapshot(
        what,
        objectWhere(byFirstPage[k]!),
        'firstPage',
        `pages ${cur.firstPage}..${pagesEnd(cur) - 1} overlap pages ${prev.firstPage}..${pagesEnd(prev) - 1} of ${objectWhere(byFirstPage[k - 1]!)}`,
      );
    }
  }

  for (let i = 0; i < content.logs.length; i++) {
    const e = content.logs[i];
    if (!Array.isArray(e) || e.length !== 6) {
      throw badSnapshot(what, `log entry ${i}`, 'logs', `must be [name, maxBytes, first, next, sizes, data]`);
    }
    const [name, maxBytes, first, next, sizes, data] = e as unknown[];
    const bad = (field: string, rule: string) => badSnapshot(what, logWhere(i), field, rule);
    checkName(what, logWhere, i, name, storedNames);
    const same = names.get(name as string);
    if (same !== undefined) throw bad('name', `the name is also the name of ${holderOf(same)}`);
    names.set(name as string, -1 - i);
    if (!isSafeInt(maxBytes, 1) || maxBytes > MAX_LOG_MAX_BYTES)
      throw bad('maxBytes', `maxBytes ${show(maxBytes)} must be an integer 1..${MAX_LOG_MAX_BYTES}`);
    if (!isSafeInt(first, 0)) throw bad('first', `first ${show(first)} must be an integer >= 0`);
    if (!isSafeInt(next, first))
      throw bad('next', `next ${show(next)} must be an integer >= first (${first})`);
    const count = next - first;
    if (!Buffer.isBuffer(sizes) || sizes.length !== count * 4) {
      throw bad(
        'sizes',
        `sizes must hold one u32 per retained record (${count} records, ${count * 4} bytes); got ${show(sizes)}`,
      );
    }
    let total = 0;
    for (let r = 0; r < count; r++) {
      const n = sizes.readUInt32LE(r * 4);
      if (n > MAX_LOG_RECORD_BYTES)
        throw bad('sizes', `record ${first + r} is ${n} bytes, above ${MAX_LOG_RECORD_BYTES}`);
      total += n;
    }
    if (!Buffer.isBuffer(data) || data.length !== total)
      throw bad('data', `data must be the records' ${total} bytes; got ${show(data)}`);
  }
  if (content.users !== undefined) checkUsers(what, content.users);
  checkGroup(content, what);
}

/** The group's range and slot table of `content` (see the module comment); absent ones are the defaults. */
export function checkGroup(content: StateContent, what: string): void {
  const { pageBytes } = content;
  const group = content.group ?? wholeSegment(content.segmentBytes);
  if (content.group !== undefined) {
    const problem = groupRangeProblem(group, pageBytes, content.segmentBytes);
    if (problem) throw badSnapshot(what, '', 'group', problem);
    const first = group.start / pageBytes;
    const end = first + group.bytes / pageBytes;
    for (const o of content.objects) {
      const last = o.firstPage + Math.ceil(o.size / pageBytes);
      if (o.firstPage < first || last > end) {
        throw badSnapshot(
          what,
          `object ${nameLabel(o.name)} (id ${show(o.id)})`,
          'firstPage',
          `pages ${o.firstPage}..${last - 1} must be inside group ${group.id}'s pages ${first}..${end - 1}`,
        );
      }
    }
  }
  if (content.slotTable !== undefined) {
    let ids: number[];
    try {
      ids = validateSlotTable(content.slotTable).groups.map((g) => g.id);
    } catch (err) {
      throw badSnapshot(what, '', 'slots', (err as Error).message);
    }
    if (!ids.includes(group.id)) {
      throw badSnapshot(
        what,
        '',
        'slots',
        `the slot table lists groups ${ids.join(', ')} but not this content's group ${group.id}`,
      );
    }
  }
}

/** Throws (see the module comment) unless `users` are valid user entries. */
export function checkUsers(what: string, users: unknown): void {
  if (!Array.isArray(users)) throw badSnapshot(what, '', 'users', `users must be a list; got ${show(users)}`);
  if (users.length > MAX_USERS)
    throw badSnapshot(what, '', 'users', `at most ${MAX_USERS} users; got ${users.length}`);
  const names = new Set<string>();
  for (let i = 0; i < users.length; i++) {
    const e = users[i];
    if (!Array.isArray(e) || e.length !== 7) {
      throw badSnapshot(what, `user entry ${i}`, 'users', 'must be [name, salt, n, r, p, hash, rules]');
    }
    const [name, salt, n, r, p, hash, rules] = e as unknown[];
    const where = `user ${nameLabel(name)}`;
    const guard = (field: string, check: () => void) => {
      try {
        check();
      } catch (err) {
        throw badSnapshot(what, where, field, (err as Error).message);
      }
    };
    guard('name', () => validateUserName(name, 'name'));
    if (names.has(name as string))
      throw badSnapshot(what, where, 'name', 'the name is also the name of another user');
    names.add(name as string);
    guard('password', () => validatePasswordHash({ salt, n, r, p, hash }, 'password'));
    if (!Array.isArray(rules) || rules.length > MAX_RULES_PER_USER) {
      throw badSnapshot(
        what,
        where,
        'rules',
        `rules must be a list of at most ${MAX_RULES_PER_USER}; got ${show(rules)}`,
      );
    }
    const prefixes = new Set<string>();
    for (const rule of rules) {
      if (!Array.isArray(rule) || rule.length !== 2)
        throw badSnapshot(what, where, 'rules', 'a rule must be [prefix, right]');
      guard('rules', () => validateAclPrefix(rule[0], 'prefix'));
      guard('rules', () => validateRight(rule[1], 'right'));
      if (prefixes.has(rule[0]))
        throw badSnapshot(what, where, 'rules', `two rules for prefix ${nameLabel(rule[0])}`);
      prefixes.add(rule[0]);
    }
  }
}
