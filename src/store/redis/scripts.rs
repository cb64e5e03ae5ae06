//! The Lua scripts: each runs atomically on one key, a record's or an entity version's.

use ::redis::Script;
use std::sync::LazyLock;

/// `KEYS[1]` the record; `ARGV`: token, fingerprint (empty for none), created_ms, expires_ms,
/// keep_ms, retention_ms. Returns 1 if the key was taken, 2 if it was taken over from a claim
/// whose lease ended unfinished, else the holder's hash (HGETALL).
///
/// An in-flight record is kept `keep_ms` = lease + retention: while more than `retention_ms` of
/// it remains, the lease runs. Redis' clock alone decides, as it does for the ttl.
const CLAIM_LUA: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if state == '1' or (state == '0' and redis.call('PTTL', KEYS[1]) > tonumber(ARGV[6])) then
  return redis.call('HGETALL', KEYS[1])
end
local took_over = 0
if state == '0' then
  took_over = 1
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'state', '0', 'token', ARGV[1], 'created_ms', ARGV[3], 'expires_ms', ARGV[4])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1 + took_over
";
/// `KEYS[1]` the record; `ARGV`: token, status, headers, body, body_omitted, expires_ms, ttl_ms,
/// retry, created_ms, fingerprint (empty for none). Completes the record if it is in flight under `token` (1), else 0. A retry (`retry` is
/// `1`) after a dropped connection also answers 1 if the record is already completed under
/// `token`: the first attempt was applied.
const COMPLETE_LUA: &str = r"
local held = redis.call('HMGET', KEYS[1], 'state', 'token')
if held[2] ~= ARGV[1] then
  return 0
end
if held[1] == '1' and ARGV[8] == '1' then
  return 1
end
if held[1] ~= '0' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', '1', 'status', ARGV[2], 'headers', ARGV[3], 'body', ARGV[4],
  'body_omitted', ARGV[5], 'expires_ms', ARGV[6], 'created_ms', ARGV[9])
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[10])
else
  redis.call('HDEL', KEYS[1], 'fingerprint')
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return 1
";

/// `KEYS[1]` the record; `ARGV[1]` the token. Deletes the record if it is in flight under the
/// token; returns how many keys were deleted.
const RELEASE_LUA: &str = r"
local held = redis.call('HMGET', KEYS[1], 'state', 'token')
if held[1] == '0' and held[2] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// `KEYS[1]` an entity's version; `ARGV`: the encoded version, expires_ms (Unix ms, for
/// PEXPIREAT). Writes the version unless the key holds a higher one of the same kind (an expired
/// one is gone: Redis deleted it), and sets the expiry whenever it writes. Returns 1 if it
/// wrote, else 0.
///
/// Compared byte by byte: Lua's `<` on strings is `strcoll`, and Redis sets `LC_COLLATE` from its
/// environment. A stored value of another length is no version of ours, and is replaced.
const RAISE_VERSION_LUA: &str = r"
local function higher(stored, offered)
  for i = 1, #stored do
    local a, b = string.byte(stored, i), string.byte(offered, i)
    if a ~= b then
      return a > b
    end
  end
  return false
end
local stored = redis.call('GET', KEYS[1])
local offered = ARGV[1]
if stored and #stored == #offered and string.byte(stored, 1) == string.byte(offered, 1)
    and higher(stored, offered) then
  return 0
end
redis.call('SET', KEYS[1], offered)
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
";

pub(super) static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_LUA));
pub(super) static COMPLETE: LazyLock<Script> = LazyLock::new(|| Script::new(COMPLETE_LUA));
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));
pub(super) static RAISE_VERSION: LazyLock<Script> = LazyLock::new(|| Script::new(RAISE_VERSION_LUA));
