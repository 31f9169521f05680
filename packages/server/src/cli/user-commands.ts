/**
 * `segmem user add|rm|ls` and `segmem acl set|rm|ls`: the users of a cluster and their access rules. A new
 * user's password is hashed here (scrypt, a fresh salt) and only the hash travels to the servers.
 */
import {
  ACCESS_RIGHTS,
  type AclRule,
  MAX_PASSWORD_BYTES,
  SegmemError,
  type UserInfo,
  type UsersRequest,
  validateAclPrefix,
  validatePassword,
  validateUserName,
} from '@segmem/protocol';
import { hashPassword } from '../node/passwords.js';
import { adminCall } from './admin-client.js';
import { type Parsed, UsageError } from './args.js';
import {
  CONNECTION_OPTIONS,
  type Command,
  connectionOf,
  escapeText,
  firstLine,
  JSON_OPTION,
  json,
  out,
  readPasswordFile,
  table,
} from './common.js';

function userArg(value: string): string {
  try {
    return validateUserName(value, 'USER');
  } catch (err) {
    throw new UsageError((err as Error).message, null);
  }
}

function prefixArg(value: string): string {
  try {
    return validateAclPrefix(value, 'PREFIX');
  } catch (err) {
    throw new UsageError((err as Error).message, null);
  }
}

/** Standard input's first line; refused on a terminal (it would echo the password). */
async function passwordFromStdin(): Promise<string> {
  if (process.stdin.isTTY) {
    throw new UsageError(
      'give the new password on standard input (a pipe) or with --new-password-file FILE',
      null,
    );
  }
  let text = '';
  for await (const chunk of process.stdin) {
    text += (chunk as Buffer).toString('utf8');
    if (text.length > 4 * MAX_PASSWORD_BYTES) break;
  }
  return firstLine(text);
}

async function usersCall(p: Parsed, req: Omit<UsersRequest, 'type' | 'seq'>): Promise<UserInfo[]> {
  // adminCall opens a session of its own; its first mutation is seq 1.
  const answer = await adminCall(connectionOf(p), { type: 'USERS', seq: req.op === 'list' ? 0 : 1, ...req });
  return answer.users;
}

function rulesText(rules: AclRule[]): string {
  return rules.length === 0
    ? '-'
    : rules.map(([prefix, right]) => `${escapeText(JSON.stringify(prefix))}=${right}`).join(' ');
}

const USERS_DESCRIPTION = `Needs the admin right on every name: the cluster's token (--token), or a user with the
    rule '' admin. While a cluster has no users, every client may do everything (or every client with the
    token, when the servers have one); once a user exists, a client must log in as a user or present the token.`;

export const userAdd: Command = {
  name: 'user add',
  args: [{ name: 'NAME' }],
  summary: 'add a user (its password from standard input or a file)',
  description: `Adds the user NAME (1..64 characters of A-Z a-z 0-9 . _ @ -). Its password is the first line of
    standard input, or of --new-password-file FILE; it is hashed here with scrypt (N=2^14, r=8, p=1, a random
    16-byte salt) and only the hash is sent and stored. A password is never taken as an argument (other users
    of the machine could read it). The user starts without rights; --admin gives it the rule '' admin (every
    right on every name), the way to make the first administrator. ALREADY_EXISTS when the name is taken.
    ${USERS_DESCRIPTION}`,
  options: [
    {
      name: 'new-password-file',
      value: 'FILE',
      help: "the new user's password: FILE's first line",
      default: 'standard input',
    },
    { name: 'admin', help: "give the user the rule '' admin (every right on every name)" },
    JSON_OPTION,
    ...CONNECTION_OPTIONS,
  ],
  async run(p) {
    const name = userArg(p.args[0]!);
    const file = p.values.get('new-password-file');
    const password =
      file !== undefined ? readPasswordFile(file, '--new-password-file') : await passwordFromStdin();
    try {
      validatePassword(password, 'the new password');
    } catch (err) {
      throw new SegmemError('INVALID_ARGUMENT', (err as Error).message);
    }
    const hash = await hashPassword(password);
    const users = await usersCall(p, {
      op: 'add',
      user: name,
      password: hash,
      ...(p.flags.has('admin') ? { rules: [['', 'admin']] as AclRule[] } : {}),
    });
    if (p.flags.has('json')) return void (await json({ users }));
    await out(`added user ${name}${p.flags.has('admin') ? ' (admin)' : ''}\n`);
  },
};

export const userRm: Command = {
  name: 'user rm',
  args: [{ name: 'NAME' }],
  summary: 'remove a user and its rules',
  description: `Removes the user NAME and its rules; its open sessions lose every right at once (their next
    request is UNAUTHORIZED) and it cannot log in again. NOT_FOUND when there is no such user.
    ${USERS_DESCRIPTION}`,
  options: [JSON_OPTION, ...CONNECTION_OPTIONS],
  async run(p) {
    const name = userArg(p.args[0]!);
    await usersCall(p, { op: 'remove', user: name });
    if (p.flags.has('json')) return void (await json({ user: name, removed: true }));
    await out(`removed user ${name}\n`);
  },
};

export const userLs: Command = {
  name: 'user ls',
  args: [],
  summary: 'list the users and their rules',
  description: `Lists every user, by name, with its rules (PREFIX=RIGHT, the prefix quoted). Password hashes
    are never shown. ${USERS_DESCRIPTION}`,
  options: [JSON_OPTION, ...CONNECTION_OPTIONS],
  async run(p) {
    const users = await usersCall(p, { op: 'list', user: null });
    if (p.flags.has('json')) return void (await json({ users }));
    if (users.length === 0) return void (await out('no users\n'));
    await out(table([['USER', 'RULES'], ...users.map((u) => [u.name, rulesText(u.rules)])]));
  },
};

export const aclSet: Command = {
  name: 'acl set',
  args: [{ name: 'USER' }, { name: 'PREFIX' }, { name: 'RIGHT' }],
  summary: 'give USER the RIGHT (read, write, admin) on names starting with PREFIX',
  description: `Sets USER's rule for PREFIX (0..255 bytes; '' is every name) to RIGHT: read (stat, list, read
    acquires, watch, log reads), write (also create, delete, write acquires and releases, log appends and
    truncations) or admin (also, with PREFIX '', membership changes, snapshots, users and rules). A user's
    right on a name is the strongest of its rules whose prefix starts the name. An existing rule for PREFIX
    gets the new RIGHT. At most 64 rules per user. NOT_FOUND when there is no such user. ${USERS_DESCRIPTION}`,
  options: [JSON_OPTION, ...CONNECTION_OPTIONS],
  async run(p) {
    const user = userArg(p.args[0]!);
    const prefix = prefixArg(p.args[1]!);
    const right = p.args[2]!;
    if (!(ACCESS_RIGHTS as readonly string[]).includes(right))
      throw new UsageError(`RIGHT must be read, write or admin; got ${JSON.stringify(right)}`, null);
    const users = await usersCall(p, { op: 'aclSet', user, prefix, right: right as AclRule[1] });
    if (p.flags.has('json')) return void (await json({ users }));
    await out(`${user}: ${rulesText(users[0]?.rules ?? [])}\n`);
  },
};

export const aclRm: Command = {
  name: 'acl rm',
  args: [{ name: 'USER' }, { name: 'PREFIX' }],
  summary: "remove USER's rule for PREFIX",
  description: `Removes USER's rule for exactly PREFIX (other rules stay). NOT_FOUND when USER has no rule
    for it. ${USERS_DESCRIPTION}`,
  options: [JSON_OPTION, ...CONNECTION_OPTIONS],
  async run(p) {
    const user = userArg(p.args[0]!);
    const prefix = prefixArg(p.args[1]!);
    const users = await usersCall(p, { op: 'aclRemove', user, prefix });
    if (p.flags.has('json')) return void (await json({ users }));
    await out(`${user}: ${rulesText(users[0]?.rules ?? [])}\n`);
  },
};

export const aclLs: Command = {
  name: 'acl ls',
  args: [{ name: 'USER', optional: true }],
  summary: 'list the rules of every user, or of USER',
  description: `Lists one line per rule: user, prefix (quoted) and right; of USER only when given (NOT_FOUND
    when there is no such user). ${USERS_DESCRIPTION}`,
  options: [JSON_OPTION, ...CONNECTION_OPTIONS],
  async run(p) {
    const only = p.args[0] !== undefined ? userArg(p.args[0]) : null;
    const users = await usersCall(p, { op: 'list', user: only });
    if (only !== null && users.length === 0) throw new SegmemError('NOT_FOUND', `no user named ${only}`);
    if (p.flags.has('json')) return void (await json({ users }));
    const rows = users.flatMap((u) =>
      u.rules.map(([prefix, right]) => [u.name, escapeText(JSON.stringify(prefix)), right]),
    );
    if (rows.length === 0) return void (await out('no rules\n'));
    await out(table([['USER', 'PREFIX', 'RIGHT'], ...rows]));
  },
};
