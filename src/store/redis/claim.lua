#!lua
-- Claims a record: reports the live record if there is one, otherwise
-- creates it in flight with a fresh fencing token and a lease set by `PX`.
-- The record's key is the only key touched, so the script runs on a Redis
-- Cluster as on one server.
--
-- The token is Redis's clock in microseconds, then the caller's random
-- bits: kept as `micros:bits` and compared for equality by the other
-- scripts. The claims of one record follow each other (the next needs the
-- record gone), so they read later times, and the random bits keep two
-- claims apart even on clocks that stepped back (a failover to another
-- machine).
--
-- KEYS: record. ARGV: fingerprint, lease in ms, random bits (decimal).
-- Returns `{0, micros}` (acquired), `{1, fingerprint}` (in flight) or
-- `{2, fingerprint, outcome}` (completed).
local record = redis.call('HMGET', KEYS[1], 'fp', 'outcome')
if record[1] then
  if record[2] then return {2, record[1], record[2]} end
  return {1, record[1]}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('ERR idempotency record ' .. KEYS[1] .. ' has no fingerprint')
end
local now = redis.call('TIME')
-- Below 2^53, so exact; '%d' keeps every digit.
local micros = tonumber(now[1]) * 1000000 + tonumber(now[2])
redis.call('HSET', KEYS[1], 'token', string.format('%d', micros) .. ':' .. ARGV[3], 'fp', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {0, micros}
