/**
 * Password hashing and checking with scrypt (node:crypto, on libuv's thread pool, never on the event loop).
 * Hashes are made where the password is typed (the admin's `segmem user add`); servers only check them,
 * at most MAX_CONCURRENT_LOGINS at once (see {@link LoginGate}), so a flood of HELLOs with passwords cannot
 * take the thread pool or the memory (16 MiB per check) from everything else.
 */
import { scrypt, timingSafeEqual } from 'node:crypto';
import {
  DEFAULT_SCRYPT,
  type Env,
  MAX_CONCURRENT_LOGINS,
  MAX_LOGIN_QUEUE,
  PASSWORD_HASH_BYTES,
  PASSWORD_SALT_BYTES,
  type PasswordHash,
  SegmemError,
  systemEnv,
} from '@segmem/protocol';

function scryptBytes(
  password: string,
  salt: Buffer,
  params: { n: number; r: number; p: number },
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(
      password,
      salt,
      PASSWORD_HASH_BYTES,
      // maxmem above what these parameters need (128 * N * r), which node's default (32 MiB) may not be.
      { N: params.n, r: params.r, p: params.p, maxmem: 128 * params.n * params.r + 1024 * 1024 },
      (err, key) => (err ? reject(err) : resolve(key)),
    );
  });
}

/**
 * A new hash of `password` with a fresh random 16-byte salt (from `env`, the process's own by default) and
 * `params` (default N=2^14, r=8, p=1).
 */
export async function hashPassword(
  password: string,
  env: Pick<Env, 'randomBytes'> = systemEnv,
  params: { n: number; r: number; p: number } = DEFAULT_SCRYPT,
): Promise<PasswordHash> {
  const salt = env.randomBytes(PASSWORD_SALT_BYTES);
  const key = await scryptBytes(password, salt, params);
  return { salt: salt.toString('hex'), n: params.n, r: params.r, p: params.p, hash: key.toString('hex') };
}

/** True when `password` hashes to `stored` (compared in constant time). */
export async function verifyPassword(password: string, stored: PasswordHash): Promise<boolean> {
  const key = await scryptBytes(password, Buffer.from(stored.salt, 'hex'), stored);
  const expected = Buffer.from(stored.hash, 'hex');
  return key.length === expected.length && timingSafeEqual(key, expected);
}

/**
 * Checked against for an unknown user, so that a wrong name costs the same scrypt as a wrong password and
 * the answer's timing does not tell which names exist. No password hashes to it but by chance (2^-256).
 */
export const DECOY_HASH: PasswordHash = {
  salt: '00'.repeat(PASSWORD_SALT_BYTES),
  ...DEFAULT_SCRYPT,
  hash: '00'.repeat(PASSWORD_HASH_BYTES),
};

/** Runs at most MAX_CONCURRENT_LOGINS checks at once; up to MAX_LOGIN_QUEUE more wait, the rest are refused. */
export class LoginGate {
  private running = 0;
  private readonly queue: (() => void)[] = [];

  constructor(
    private readonly maxRunning = MAX_CONCURRENT_LOGINS,
    private readonly maxQueued = MAX_LOGIN_QUEUE,
  ) {}

  /**
   * Runs `check` when a slot is free. `wanted` is asked again then: a HELLO whose connection closed while it
   * waited (the handshake deadline) is dropped without running its scrypt.
   */
  async run<T>(check: () => Promise<T>, wanted: () => boolean): Promise<T> {
    if (this.running >= this.maxRunning) {
      if (this.queue.length >= this.maxQueued) {
        throw new SegmemError('UNAVAILABLE', 'too many logins in progress on this server; try again', {
          reason: 'LOGIN_BUSY',
        });
      }
      await new Promise<void>((resolve) => this.queue.push(resolve));
    } else {
      this.running++;
    }
    try {
      if (!wanted()) throw new SegmemError('CLOSED', 'the connection closed while its login waited');
      return await check();
    } finally {
      const next = this.queue.shift();
      // The slot passes to the next waiter as it is; with none, it frees.
      if (next) next();
      else this.running--;
    }
  }
}
