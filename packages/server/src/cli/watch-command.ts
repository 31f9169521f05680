/** `segmem watch NAME`: one line per committed change of an object, from the leader's CHANGED pushes. */
import { decodeChanged, type Frame, MessageType, SegmemError, validateName } from '@segmem/protocol';
import { AdminSession } from './admin-client.js';
import { parseCount, UsageError } from './args.js';
import {
  CONNECTION_OPTIONS,
  type Command,
  connectionOf,
  escapeText,
  JSON_OPTION,
  json,
  out,
} from './common.js';

export const watch: Command = {
  name: 'watch',
  args: [{ name: 'NAME' }],
  summary: 'print a line for every committed change of object NAME',
  description: `Watches object NAME and prints "NAME version V" (with --json {"name":...,"version":V}) each
    time a write release of it is committed, until Ctrl-C. When changes come faster than they are printed,
    one line carries the newest version (versions grow by one per write release, so a jump says how many
    changes it covers); no version is printed twice or out of order. With --from V it first prints the
    current version if it is newer than V. After a lost connection or a failover it watches again on the
    leader and prints the newest version if it changed meanwhile. Fails with NOT_FOUND when there is no
    such object, or when the object is deleted.`,
  options: [
    { name: 'from', value: 'VERSION', help: 'print changes after this version', default: 'the current one' },
    JSON_OPTION,
    ...CONNECTION_OPTIONS,
  ],
  async run(p) {
    const name = nameArg(p.args[0]!);
    const fromArg = p.values.get('from');
    const from = fromArg === undefined ? null : parseCount('--from', fromArg);
    const asJson = p.flags.has('json');
    let objectId = 0;
    const early = new Map<number, number>();
    /** Newest version learnt (pushes and WATCH answers); 0 until the first answer. */
    let newest = 0;
    let deleted = false;
    let reconnect = false;
    let stop = false;
    let wake: (() => void) | null = null;
    const rouse = () => {
      const w = wake;
      wake = null;
      w?.();
    };
    const session = new AdminSession({
      ...connectionOf(p),
      onPush: (frame: Frame) => {
        if (frame.type !== MessageType.CHANGED) return;
        let objects: [number, number][];
        try {
          objects = decodeChanged(frame).objects;
        } catch {
          reconnect = true; // an unreadable push: ask again, the answer has the version
          return rouse();
        }
        for (const [id, version] of objects) {
          // A push that came with the first answer, before its object id is known here.
          if (objectId === 0 && early.get(id) !== 0)
            early.set(id, version && Math.max(early.get(id) ?? 0, version));
          if (id !== objectId) continue;
          if (version === 0) deleted = true;
          else newest = Math.max(newest, version);
        }
        rouse();
      },
      onDisconnect: () => {
        reconnect = true;
        rouse();
      },
    });
    const interrupted = () => {
      stop = true;
      rouse();
    };
    process.once('SIGINT', interrupted);
    process.once('SIGTERM', interrupted);
    const goneError = () => new SegmemError('NOT_FOUND', `object "${name}" was deleted`);
    try {
      // Fails within --timeout when no leader answers, with the one line every command prints.
      const first = await session.call({ type: 'WATCH', name });
      objectId = first.objectId;
      newest = Math.max(newest, first.version);
      const pushed = early.get(objectId);
      early.clear();
      if (pushed === 0) deleted = true;
      else if (pushed !== undefined) newest = Math.max(newest, pushed);
      let printed = from ?? first.version;
      while (!stop) {
        if (reconnect) {
          reconnect = false;
          // Watches are the leader's session state: a new leader (or a new session) needs it again.
          const again = await session.call({ type: 'WATCH', name }).catch((err: unknown) => {
            if (SegmemError.is(err, 'NOT_FOUND')) throw goneError();
            throw err;
          });
          if (again.objectId !== objectId) deleted = true;
          else newest = Math.max(newest, again.version);
        }
        if (newest > printed) {
          printed = newest;
          if (asJson) await json({ name, version: printed });
          else await out(`${escapeText(name)} version ${printed}\n`);
          continue;
        }
        if (deleted) throw goneError();
        if (stop || reconnect) continue;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
    } finally {
      process.off('SIGINT', interrupted);
      process.off('SIGTERM', interrupted);
      await session.close();
    }
    return 0;
  },
};

function nameArg(value: string): string {
  try {
    return validateName(value);
  } catch (err) {
    throw new UsageError(`NAME: ${(err as Error).message}`, null);
  }
}
