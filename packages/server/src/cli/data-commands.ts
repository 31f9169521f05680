/**
 * Data commands, as etcdctl and redis-cli users expect them: ls, stat, get, put, rm, create. Each runs in
 * one operator session on the leader, speaking the protocol (the server package does not use the client SDK).
 */
import { readFile, rm as removeFile, rename, writeFile } from 'node:fs/promises';
import {
  type AcquireOk,
  changedRanges,
  gatherRanges,
  MAX_OBJECT_BYTES,
  type ObjectRecord,
  PAGE_BYTES,
  SegmemError,
  validateName,
  validatePrefix,
} from '@segmem/protocol';
import { AdminSession } from './admin-client.js';
import { UsageError } from './args.js';
import {
  CONNECTION_OPTIONS,
  type Command,
  connectionOf,
  escapeText,
  explain,
  JSON_OPTION,
  json,
  out,
  table,
} from './common.js';

/** Runs `body` in an operator session that ends (locks released) whatever happens, Ctrl-C included. */
async function withSession<T>(
  p: Parameters<Command['run']>[0],
  body: (s: AdminSession) => Promise<T>,
): Promise<T> {
  const session = new AdminSession(connectionOf(p));
  const interrupted = () => {
    void session.close().then(() => process.exit(130));
  };
  process.once('SIGINT', interrupted);
  try {
    return await body(session);
  } finally {
    process.off('SIGINT', interrupted);
    await session.close();
  }
}

function info(o: ObjectRecord): { name: string; size: number; version: number; address: number } {
  return { name: o.name, size: o.size, version: o.version, address: o.address };
}

function nameArg(value: string): string {
  try {
    return validateName(value);
  } catch (err) {
    throw new UsageError(`NAME: ${(err as Error).message}`, null);
  }
}

export const ls: Command = {
  name: 'ls',
  args: [{ name: 'PREFIX', optional: true }],
  summary: 'list the objects (whose names start with PREFIX)',
  description: `Lists the objects whose names start with PREFIX (all without it), sorted by name: one line
    each with its size in bytes, version, address in the segment and name (newlines in names escaped as
    \\n, other control characters as \\xNN, bidi controls as \\u{NNNN}), under a header line; nothing at
    all when none matches. Shared logs are not objects: see segmem log.`,
  options: [JSON_OPTION, ...CONNECTION_OPTIONS],
  async run(p) {
    const prefix = p.args[0] ?? '';
    try {
      validatePrefix(prefix);
    } catch (err) {
      throw new UsageError(`PREFIX: ${(err as Error).message}`, null);
    }
    const { objects } = await withSession(p, (s) => s.call({ type: 'LIST', prefix }));
    if (p.flags.has('json')) return void (await json(objects.map(info)));
    if (objects.length === 0) return;
    await out(
      table([
        ['SIZE', 'VERSION', 'ADDRESS', 'NAME'],
        ...objects.map((o) => [String(o.size), String(o.version), String(o.address), escapeText(o.name)]),
      ]),
    );
  },
};

export const stat: Command = {
  name: 'stat',
  args: [{ name: 'NAME' }],
  summary: 'describe one object: size, version, address',
  description: `Prints the object's name, size in bytes, version (1 when created, +1 with every write
    release that changed it), address in the segment and number of pages. NOT_FOUND when there is none.`,
  options: [JSON_OPTION, ...CONNECTION_OPTIONS],
  async run(p) {
    const name = nameArg(p.args[0]!);
    const { object } = await withSession(p, (s) => s.call({ type: 'STAT', name }));
    if (p.flags.has('json')) return void (await json(info(object)));
    await out(
      table([
        ['name', escapeText(object.name)],
        ['size', String(object.size)],
        ['version', String(object.version)],
        ['address', String(object.address)],
        ['pages', String(Math.ceil(object.size / PAGE_BYTES))],
      ]),
    );
  },
};

/** The object's bytes from a grant asked for with nothing cached: the listed pages, zeros elsewhere. */
function grantBytes(grant: AcquireOk): Buffer {
  const bytes = Buffer.alloc(grant.object.size);
  let at = 0;
  for (const page of grant.pages) {
    const start = page * PAGE_BYTES;
    const n = Math.min(PAGE_BYTES, grant.object.size - start);
    bytes.set(grant.payload.subarray(at, at + n), start);
    at += n;
  }
  return bytes;
}

/** Takes `mode` access to `name` (waiting at most the timeout for it), runs `body`, gives it back. */
async function holding<T>(
  s: AdminSession,
  name: string,
  mode: 'read' | 'write',
  timeoutMs: number,
  body: (
    grant: AcquireOk,
    bytes: Buffer,
  ) => Promise<{ result: T; ranges?: [number, number][]; data?: Buffer }>,
): Promise<{ result: T; version: number }> {
  let grant: AcquireOk;
  try {
    grant = await s.call(
      { type: 'ACQUIRE', seq: s.nextSeq(), name, mode, cachedId: 0, cachedVersion: 0, timeoutMs },
      timeoutMs,
    );
  } catch (err) {
    if (SegmemError.is(err, 'TIMEOUT') && err.details?.reason !== 'NO_ANSWER')
      throw new SegmemError(
        'TIMEOUT',
        `"${name}" is held by another client; no ${mode} access within ${timeoutMs} ms`,
      );
    throw err;
  }
  const done = await body(grant, grantBytes(grant));
  const ranges = done.ranges ?? [];
  const { version } = await s.call({
    type: 'RELEASE',
    seq: s.nextSeq(),
    name,
    mode,
    token: grant.token,
    ranges,
    payload: done.data ?? Buffer.alloc(0),
  });
  return { result: done.result, version };
}

export const get: Command = {
  name: 'get',
  args: [{ name: 'NAME' }],
  summary: "print an object's bytes",
  description: `Takes read access to NAME (waiting while a writer holds it, up to the timeout), and writes
    its bytes, all of them, to standard output as they are; or into FILE with --out; or as a hex dump with
    --hex (offset, 16 bytes, the printable ones; a run of identical lines shown once, then *); or as JSON
    with --json ({"name","size","version","address","data"}, data in base64). One of --out, --hex, --json
    at most.`,
  options: [
    {
      name: 'out',
      value: 'FILE',
      help: 'write the bytes into FILE (replaced whole) instead of standard output',
    },
    { name: 'hex', help: 'print a hex dump instead of the raw bytes' },
    JSON_OPTION,
    ...CONNECTION_OPTIONS,
  ],
  async run(p) {
    const name = nameArg(p.args[0]!);
    const file = p.values.get('out');
    const formats = [file !== undefined, p.flags.has('hex'), p.flags.has('json')].filter(Boolean).length;
    if (formats > 1) throw new UsageError('give at most one of --out, --hex, --json', null);
    const conn = connectionOf(p);
    const { result } = await withSession(p, (s) =>
      holding(s, name, 'read', conn.timeoutMs, async (grant, bytes) => ({ result: { grant, bytes } })),
    );
    const { grant, bytes } = result;
    if (file !== undefined) {
      const tmp = `${file}.tmp-${process.pid}`;
      try {
        await writeFile(tmp, bytes, { flag: 'wx', mode: 0o644 });
        await rename(tmp, file);
      } catch (err) {
        await removeFile(tmp, { force: true });
        throw new SegmemError('INVALID_ARGUMENT', `cannot write ${file}: ${(err as Error).message}`);
      }
      return;
    }
    if (p.flags.has('json'))
      return void (await json({ ...info(grant.object), data: bytes.toString('base64') }));
    if (p.flags.has('hex')) return void (await out(hexDump(bytes)));
    await out(bytes);
  },
};

/** `hexdump -C` style: offset, 16 bytes in hex, the printable ones; repeated lines squeezed into `*`. */
export function hexDump(bytes: Buffer): string {
  const lines: string[] = [];
  let previous: Buffer | null = null;
  let squeezed = false;
  for (let at = 0; at < bytes.length; at += 16) {
    const row = bytes.subarray(at, at + 16);
    if (previous && row.length === 16 && row.equals(previous)) {
      if (!squeezed) lines.push('*');
      squeezed = true;
      continue;
    }
    squeezed = false;
    previous = row;
    const hex = [...row].map((b) => b.toString(16).padStart(2, '0'));
    const left = hex.slice(0, 8).join(' ');
    const right = hex.slice(8).join(' ');
    const text = [...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${at.toString(16).padStart(8, '0')}  ${left.padEnd(23)}  ${right.padEnd(23)}  |${text}|`);
  }
  lines.push(bytes.length.toString(16).padStart(8, '0'));
  return `${lines.join('\n')}\n`;
}

export const put: Command = {
  name: 'put',
  args: [{ name: 'NAME' }],
  summary: 'write bytes into an existing object',
  description: `Takes write access to the existing object NAME (waiting while anyone holds it, up to the
    timeout), writes the value, and releases it: the change is committed (on a majority of a cluster) before
    the command returns. Only the bytes that differ are sent; a value equal to what is there changes nothing
    (the version stays). The value comes from --file or --value (exactly one). Without --offset it replaces
    the object's whole content: the value's bytes, then zeros up to the object's size, so that get returns
    the value followed by zeros. With --offset N it is written at byte N and the rest of the object is left
    as it is. A value that does not fit (longer than the object, or than the object from N) is refused with
    INVALID_ARGUMENT and nothing changes; objects keep the size they were created with (rm and create to
    resize).`,
  options: [
    { name: 'file', value: 'FILE', help: "the value is FILE's bytes ('-': standard input)" },
    { name: 'value', value: 'TEXT', help: 'the value is TEXT, as UTF-8' },
    {
      name: 'offset',
      value: 'N',
      help: 'write the value at byte N, leaving the rest of the object as it is',
      default: 'replace the whole content, zeros after the value',
    },
    JSON_OPTION,
    ...CONNECTION_OPTIONS,
  ],
  async run(p) {
    const name = nameArg(p.args[0]!);
    const file = p.values.get('file');
    const text = p.values.get('value');
    if ((file === undefined) === (text === undefined))
      throw new UsageError('give the value with exactly one of --file FILE or --value TEXT', null);
    const offsetArg = p.values.get('offset');
    const offset = offsetArg === undefined ? null : parseOffset(offsetArg);
    const value = file !== undefined ? await readValue(file) : Buffer.from(text!, 'utf8');
    const conn = connectionOf(p);
    const { result, version } = await withSession(p, (s) =>
      holding(s, name, 'write', conn.timeoutMs, async (grant, before) => {
        const size = grant.object.size;
        const at = offset ?? 0;
        if (at + value.length > size) {
          throw new SegmemError(
            'INVALID_ARGUMENT',
            offset === null
              ? `the value is ${value.length} bytes; "${name}" is ${size} bytes (objects keep their size: rm and create it larger)`
              : `${value.length} bytes at offset ${at} do not fit in "${name}" (${size} bytes)`,
          );
        }
        const next = offset === null ? Buffer.alloc(size) : Buffer.from(before);
        value.copy(next, at);
        const ranges = changedRanges(next, before, PAGE_BYTES);
        const data = gatherRanges(next, ranges);
        return { result: { ranges, changed: data.length, size }, ranges, data };
      }).catch((err) => {
        throw explain(err, `writing "${name}"`);
      }),
    );
    if (p.flags.has('json'))
      return void (await json({ name, version, changedBytes: result.changed, ranges: result.ranges }));
    await out(
      result.changed === 0
        ? `"${escapeText(name)}" unchanged (version ${version})\n`
        : `wrote "${escapeText(name)}": ${result.changed} of ${result.size} bytes changed in ${result.ranges.length} range${result.ranges.length === 1 ? '' : 's'}, version ${version}\n`,
    );
  },
};

function parseOffset(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n >= MAX_OBJECT_BYTES)
    throw new UsageError(
      `--offset must be a byte offset 0..${MAX_OBJECT_BYTES - 1}; got ${JSON.stringify(value)}`,
      null,
    );
  return n;
}

async function readValue(file: string): Promise<Buffer> {
  if (file === '-') {
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const chunk of process.stdin) {
      chunks.push(chunk as Buffer);
      total += (chunk as Buffer).length;
      // No object is larger: stop reading an endless stream early.
      if (total > MAX_OBJECT_BYTES)
        throw new SegmemError('INVALID_ARGUMENT', `standard input holds more than ${MAX_OBJECT_BYTES} bytes`);
    }
    return Buffer.concat(chunks);
  }
  try {
    return await readFile(file);
  } catch (err) {
    throw new SegmemError('NOT_FOUND', `cannot read ${file}: ${(err as Error).message}`);
  }
}

export const rm: Command = {
  name: 'rm',
  args: [{ name: 'NAME' }],
  summary: 'delete an object (or a shared log)',
  description: `Deletes the object (or shared log) NAME; the deletion is committed before the command returns.
    Waiters and holders lose it (their release fails with LOCK_LOST). NOT_FOUND when there is none.`,
  options: [JSON_OPTION, ...CONNECTION_OPTIONS],
  async run(p) {
    const name = nameArg(p.args[0]!);
    await withSession(p, (s) =>
      s.call({ type: 'DELETE', seq: s.nextSeq(), name }).catch((err) => {
        throw explain(err, `deleting "${name}"`);
      }),
    );
    if (p.flags.has('json')) return void (await json({ name, deleted: true }));
    await out(`deleted "${escapeText(name)}"\n`);
  },
};

export const create: Command = {
  name: 'create',
  args: [{ name: 'NAME' }, { name: 'SIZE' }],
  summary: 'create a zero-filled object of SIZE bytes',
  description: `Creates the object NAME of SIZE bytes, zero-filled, at a page-aligned address; committed before
    the command returns. SIZE is a number of bytes, 1 to ${MAX_OBJECT_BYTES}, or with a K or M suffix (KiB,
    MiB). An existing NAME is ALREADY_EXISTS, unless --if-not-exists (then it says so and exits 0).`,
  options: [
    { name: 'if-not-exists', help: 'an object of that name already there is not an error' },
    JSON_OPTION,
    ...CONNECTION_OPTIONS,
  ],
  async run(p) {
    const name = nameArg(p.args[0]!);
    const size = parseSize(p.args[1]!);
    const ifNotExists = p.flags.has('if-not-exists');
    const r = await withSession(p, (s) =>
      s.call({ type: 'CREATE', seq: s.nextSeq(), name, size, ifNotExists }).catch((err) => {
        throw explain(err, `creating "${name}"`);
      }),
    );
    if (p.flags.has('json')) return void (await json({ ...info(r.object), created: r.created }));
    const o = r.object;
    await out(
      r.created
        ? `created "${escapeText(o.name)}": ${o.size} bytes at address ${o.address}\n`
        : `"${escapeText(o.name)}" exists already: ${o.size} bytes at address ${o.address}, version ${o.version}\n`,
    );
  },
};

/** SIZE: bytes, or with a K or M suffix (binary). */
export function parseSize(value: string): number {
  const m = /^(\d+)([KM]?)$/i.exec(value);
  const n = m
    ? Number(m[1]) * (m[2]?.toUpperCase() === 'K' ? 1024 : m[2]?.toUpperCase() === 'M' ? 1024 * 1024 : 1)
    : NaN;
  if (!Number.isSafeInteger(n) || n < 1 || n > MAX_OBJECT_BYTES)
    throw new UsageError(
      `SIZE must be 1..${MAX_OBJECT_BYTES} bytes (a number, or with K or M); got ${JSON.stringify(value)}`,
      null,
    );
  return n;
}
