/**
 * Page reads served by followers, so the leader sends grants and the followers the bytes. A grant whose
 * changed pages exceed {@link FOLLOWER_READ_MIN_BYTES} comes without them (`deferred`); the client reads
 * them here with READ_PAGES from the followers in turn, over page-reader connections (no session), and
 * from the leader through the session when no follower answers in time.
 */

import type { ConnectionOptions } from 'node:tls';
import { type AcquireOk, type Env, SegmemError } from '@segmem/protocol';
import { type Dial, Session, tcpDial } from './session.js';

/** Grants with at least this many page bytes are read from followers (smaller ones come with the grant). */
export const FOLLOWER_READ_MIN_BYTES = 64 * 1024;
/** How long a follower may take to catch up with the granted version before the leader is asked instead. */
const FOLLOWER_WAIT_MS = 500;
/** How long to wait for a follower's answer at all (a paused or partitioned follower). */
const FOLLOWER_DEADLINE_MS = 2000;
/** After a follower failed, it is skipped for this long. */
const FOLLOWER_BACKOFF_MS = 2000;
/** How often the membership is asked again, at most. */
const MEMBERS_REFRESH_MS = 5000;

interface Reader {
  session: Promise<Session>;
  failedAt: number;
}

export class FollowerReads {
  private members: [string, string | null][] = [];
  private membersAt = 0;
  private refreshing: Promise<void> | null = null;
  private readonly readers = new Map<string, Reader>();
  private next = 0;
  private closed = false;
  /** Pages read from followers and from the leader (diagnostics, tests). */
  readonly stats = { fromFollowers: 0, fromLeader: 0 };
  /** Traffic of page-reader connections already closed. */
  private readonly retired = { bytesSent: 0, bytesReceived: 0, requests: 0 };
  private readonly live = new Set<Session>();

  private readonly env: Env;

  constructor(
    private readonly session: Session,
    private readonly opts: {
      sessionTimeoutMs: number;
      token?: string;
      login?: { user: string; password: string };
      /** Dial followers over TLS with these options. */
      tls?: ConnectionOptions;
      /** How to reach one follower (default: TCP; the simulator passes its network's). */
      dial?: (address: string) => Dial;
    },
  ) {
    this.env = session.env;
  }

  /** Whether grants should leave their bytes to followers: only when there are followers to ask. */
  get active(): boolean {
    this.refresh();
    return !this.closed && this.members.length > 1;
  }

  /** The bytes of a deferred grant's pages, at the granted version. */
  async fetch(grant: AcquireOk): Promise<Buffer> {
    const req = {
      type: 'READ_PAGES' as const,
      objectId: grant.object.id,
      version: grant.object.version,
      pages: grant.pages,
    };
    const follower = this.pickFollower();
    if (follower) {
      try {
        const reader = await follower.session;
        const answer = await withDeadline(
          this.env,
          reader.call({ ...req, waitMs: FOLLOWER_WAIT_MS }),
          FOLLOWER_DEADLINE_MS,
        );
        checkPagesAnswer(grant, answer.object.version);
        this.stats.fromFollowers += grant.pages.length;
        return Buffer.from(answer.payload.buffer, answer.payload.byteOffset, answer.payload.byteLength);
      } catch (err) {
        // A lost grant is the caller's answer; anything else only means this follower could not help now.
        if (SegmemError.is(err, 'LOCK_LOST')) throw err;
        follower.failedAt = this.env.now();
        this.dropReader(follower);
      }
    }
    const answer = await this.session.call({ ...req, waitMs: 0 });
    checkPagesAnswer(grant, answer.object.version);
    this.stats.fromLeader += grant.pages.length;
    return Buffer.from(answer.payload.buffer, answer.payload.byteOffset, answer.payload.byteLength);
  }

  /** Bytes and requests of the page-reader connections, open and closed. */
  traffic(): { bytesSent: number; bytesReceived: number; requests: number } {
    const t = { ...this.retired };
    for (const s of this.live) {
      t.bytesSent += s.traffic.bytesSent;
      t.bytesReceived += s.traffic.bytesReceived;
      t.requests += s.traffic.requests;
    }
    return t;
  }

  close(): void {
    this.closed = true;
    for (const r of this.readers.values()) r.session.then((s) => s.close()).catch(() => {});
    this.readers.clear();
  }

  /** The next follower in turn with an address, skipping the leader and recently failed ones. */
  private pickFollower(): Reader | null {
    const leader = this.session.hello.serverId;
    const candidates = this.members.filter(([id, address]) => id !== leader && address !== null);
    for (let i = 0; i < candidates.length; i++) {
      const [, address] = candidates[(this.next + i) % candidates.length]!;
      let reader = this.readers.get(address!);
      if (reader && this.env.now() - reader.failedAt < FOLLOWER_BACKOFF_MS) continue;
      if (!reader || reader.failedAt > 0) reader = this.openReader(address!);
      this.next = (this.next + i + 1) % candidates.length;
      return reader;
    }
    return null;
  }

  private openReader(address: string): Reader {
    const session = Session.open({
      dial: this.opts.dial ? this.opts.dial(address) : tcpDial([address], this.env, this.opts.tls),
      env: this.env,
      sessionTimeoutMs: this.opts.sessionTimeoutMs,
      ...(this.opts.token !== undefined ? { token: this.opts.token } : {}),
      ...(this.opts.login ? { login: this.opts.login } : {}),
      clusterId: this.session.hello.clusterId,
      reconnect: false,
      pageReader: true,
      onInvalidate: () => {},
      onSessionLost: () => {
        const r = this.readers.get(address);
        if (r) r.failedAt = this.env.now();
      },
      onResumed: () => {},
    });
    session.then((s) => this.live.add(s)).catch(() => {});
    const reader: Reader = { session, failedAt: 0 };
    this.readers.set(address, reader);
    return reader;
  }

  private dropReader(reader: Reader): void {
    reader.session
      .then((s) => {
        if (this.live.delete(s)) {
          this.retired.bytesSent += s.traffic.bytesSent;
          this.retired.bytesReceived += s.traffic.bytesReceived;
          this.retired.requests += s.traffic.requests;
        }
        return s.close();
      })
      .catch(() => {});
  }

  /** Learns the members and their addresses from the leader, now and then (in the background). */
  private refresh(): void {
    if (this.closed || this.refreshing || this.env.now() - this.membersAt < MEMBERS_REFRESH_MS) return;
    this.membersAt = this.env.now();
    this.refreshing = this.session
      .call({ type: 'MEMBERSHIP', op: 'list', id: null, address: null })
      .then((r) => {
        this.members = r.members;
      })
      .catch(() => {})
      .finally(() => {
        this.refreshing = null;
      });
  }
}

/**
 * The pages must be those of the granted version: a member answering with another would hand the client
 * bytes it was not granted (a member serves only the version asked for; this checks it did).
 */
export function checkPagesAnswer(grant: AcquireOk, version: number): void {
  if (version !== grant.object.version) {
    throw new SegmemError(
      'PROTOCOL',
      `pages of "${grant.object.name}" came at version ${version}; version ${grant.object.version} was granted`,
    );
  }
}

function withDeadline<T>(env: Env, promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = env.setTimeout(
      () => reject(new SegmemError('TIMEOUT', `no answer from the follower within ${ms} ms`)),
      ms,
    );
    promise.then(
      (v) => {
        env.clearTimeout(timer);
        resolve(v);
      },
      (err) => {
        env.clearTimeout(timer);
        reject(err);
      },
    );
  });
}
