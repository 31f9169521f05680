/**
 * Limits and defaults shared by client and server. docs/limits.md lists these; keep the two in step.
 */
export const PROTOCOL_VERSION = 1;

/** Bytes in one segment page. Objects are page aligned so page rights can guard them. */
export const PAGE_BYTES = 4096;
/** Default size of the segment's address space (sparse: only used pages cost memory or disk). */
export const DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024 * 1024;
/** Largest segment a server accepts (2^46 bytes, 64 TiB: addresses stay exact in a double). */
export const MAX_SEGMENT_BYTES = 2 ** 46;
/** Largest single object. A grant carries a whole object in one frame, so this stays below the frame limit. */
export const MAX_OBJECT_BYTES = 32 * 1024 * 1024;
/** Largest frame either side accepts; checked from the length prefix, before any buffering. */
export const MAX_FRAME_BYTES = 64 * 1024 * 1024;
/** Names are UTF-8 strings of 1..255 bytes without NUL. */
export const MAX_NAME_BYTES = 255;
/** Nesting depth limit for msgpack headers. */
export const MAX_HEADER_DEPTH = 8;
/**
 * Maps and arrays a header may hold beyond {@link HEADER_FREE_CONTAINERS}: one per this many header bytes.
 * Real headers spend more per container (a `[id, version]` pair past the first 127 ids takes 5 bytes); the
 * bound keeps what decoding allocates a small multiple of the header's size (an empty map is 1 byte on the
 * wire and tens of bytes in memory).
 */
export const HEADER_BYTES_PER_CONTAINER = 4;
/** Maps and arrays any header may hold, whatever its size (on top of one per HEADER_BYTES_PER_CONTAINER bytes). */
export const HEADER_FREE_CONTAINERS = 4096;
/**
 * Array elements and map entries, all containers together, a server accepts in one request header (2^23).
 * The largest real request, a write release of a 32 MiB object changed every 17th byte, has about 2 million
 * ranges (4 million numbers); the bound caps what one frame can make a server allocate and spend decoding
 * (about 1 s and 200 MB), where the container bound alone allows 64 MiB of one-byte values.
 */
export const MAX_REQUEST_HEADER_ELEMENTS = 8 * 1024 * 1024;
/**
 * Largest frame a server accepts on a connection that has not logged in yet (no HELLO accepted, no
 * PEER_HELLO accepted); a longer length prefix closes the connection before any of the frame is buffered.
 */
export const MAX_HANDSHAKE_FRAME_BYTES = 64 * 1024;

/** `sessionTimeoutMs` when a client gives none: locks are released this long after it goes silent. */
export const DEFAULT_SESSION_TIMEOUT_MS = 10_000;
/** Smallest `sessionTimeoutMs` a client may ask for. */
export const MIN_SESSION_TIMEOUT_MS = 200;
/** Largest `sessionTimeoutMs` a client may ask for (10 minutes). */
export const MAX_SESSION_TIMEOUT_MS = 600_000;
/** Requests a client keeps in flight on one connection before callers wait (back-pressure). */
export const MAX_INFLIGHT_REQUESTS = 4096;

/** Longest credential a HELLO may carry, in UTF-8 bytes. */
export const MAX_TOKEN_BYTES = 4096;
/** Longest session secret a HELLO (answer) may carry; servers hand out 32 hex digits. */
export const MAX_SESSION_SECRET_BYTES = 64;
/** Longest `timeoutMs` a request may carry: the largest delay a Node timer supports (about 24.8 days). */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;
/** Largest UDP invalidation hint, chosen to fit one unfragmented datagram on common paths (IPv6 minimum MTU 1280). */
export const MAX_DATAGRAM_BYTES = 1200;
/** Longest error message an ERROR frame carries; longer messages are cut when encoded. */
export const MAX_ERROR_MESSAGE_CHARS = 4096;
/** Largest record of a shared log (records may be empty). */
export const MAX_LOG_RECORD_BYTES = 1024 * 1024;
/** Largest LOG_APPEND: the records of one atomic batch, together. */
export const MAX_LOG_BATCH_BYTES = 8 * 1024 * 1024;
/** Most records one LOG_APPEND may carry. */
export const MAX_LOG_BATCH_RECORDS = 65536;
/** Most record bytes one LOG_READ answer carries (at least one record, whatever its size). */
export const MAX_LOG_READ_BYTES = 4 * 1024 * 1024;
/** Retention of a log created without `maxBytes`: older records are dropped beyond this many bytes. */
export const DEFAULT_LOG_MAX_BYTES = 64 * 1024 * 1024;
/** Largest `maxBytes` a log may keep (logs live in the replicated state, in memory and in snapshots). */
export const MAX_LOG_MAX_BYTES = 1024 * 1024 * 1024;
/** Longest a BARRIER hold may last before it ends by itself: a dead coordinator stalls writes no longer. */
export const MAX_BARRIER_HOLD_MS = 10_000;

/** Most bytes of a consolidated snapshot one SNAPSHOT_READ answer carries. */
export const MAX_SNAPSHOT_CHUNK_BYTES = 16 * 1024 * 1024;

/**
 * The clock-drift bound cached grants rest on: every process's clock measures any interval within this
 * fraction of its real length (5%: far beyond a quartz clock's drift, which is well under 0.01%).
 */
export const MAX_CLOCK_DRIFT = 0.05;
/** Longest lease a client takes on its cached grants: it renews it well before, while it holds any. */
export const MAX_LEASE_MS = 3000;
/** Subtracted from every lease, for timer lateness on the client's side. */
export const LEASE_MARGIN_MS = 10;
/** Added by a restarted single server to the longest lease before it grants a lock again. */
export const LEASE_GRACE_MS = 100;

/**
 * How long after sending a lease KEEPALIVE (on its own clock) a client may use its cached grants once it is
 * answered. The servers end a session no sooner than `sessionTimeoutMs` after its last keepalive reached them
 * (a new leader: after a full timeout of its own), so with both clocks within {@link MAX_CLOCK_DRIFT} the
 * session is alive for at least `sessionTimeoutMs * (1 - drift) / (1 + drift)` after the send.
 */
export function leaseMsFor(sessionTimeoutMs: number): number {
  const safe = Math.floor((sessionTimeoutMs * (1 - MAX_CLOCK_DRIFT)) / (1 + MAX_CLOCK_DRIFT));
  return Math.max(0, Math.min(safe, MAX_LEASE_MS) - LEASE_MARGIN_MS);
}
/** Most objects one session may watch at once (WATCH); one more is refused with INVALID_ARGUMENT. */
export const MAX_WATCHES_PER_SESSION = 1024;
/**
 * Answer bytes a server queues for sending on one connection: past this it produces no more answers and
 * decodes no more requests on that connection until its socket drains, so a client that does not read holds
 * at most this much (plus one answer) of the server's memory, whatever it pipelines.
 */
export const MAX_QUEUED_ANSWER_BYTES = 16 * 1024 * 1024;
/** Requests in flight (or answers waiting for room) on one page-reader connection, which has no session. */
export const MAX_PAGE_READER_INFLIGHT_REQUESTS = 256;
/** Most users a group holds (USERS add); one more is refused with INVALID_ARGUMENT. */
export const MAX_USERS = 1000;
/** Most ACL rules (prefix, right) one user holds; one more is refused with INVALID_ARGUMENT. */
export const MAX_RULES_PER_USER = 64;
/** Longest user name in bytes (HELLO user, USERS); names are 1.. of these of [A-Za-z0-9._@-]. */
export const MAX_USER_NAME_BYTES = 64;
/** Longest password in bytes (HELLO password); an empty password is refused. */
export const MAX_PASSWORD_BYTES = 1024;
/** Password checks (scrypt) one server runs at once; the next ones wait in a queue of MAX_LOGIN_QUEUE. */
export const MAX_CONCURRENT_LOGINS = 4;
/** HELLOs with a password that may wait for a check; one more is refused with UNAVAILABLE. */
export const MAX_LOGIN_QUEUE = 64;
/** Most shard groups a slot table lists (their ids are 0..65535, as frames carry them). */
export const MAX_SLOT_GROUPS = 1024;
/** Most servers a slot table lists for one group. */
export const MAX_GROUP_MEMBERS = 64;
