-- Claims a record: reports the live record if there is one, otherwise
-- creates it in flight with a fresh fencing token and a lease set by `PX`.
--
-- KEYS: record, token counter. ARGV: fingerprint, lease in ms.
-- Returns `{0, token}`, `{1, fingerprint}` (in flight) or
-- `{2, fingerprint, outcome}` (completed).
local record = redis.call('HMGET', KEYS[1], 'fp', 'outcome')
if record[1] then
  if record[2] then return {2, record[1], record[2]} end
  return {1, record[1]}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('ERR idempotency record ' .. KEYS[1] .. ' has no fingerprint')
end
local token = redis.call('INCR', KEYS[2])
if token == 1 then
  -- The counter was lost (evicted, flushed): restart it above every token it
  -- could have handed out, so a token is never issued twice for a key.
  local now = redis.call('TIME')
  redis.call('SET', KEYS[2], now[1] .. string.format('%06d', tonumber(now[2])))
  token = redis.call('INCR', KEYS[2])
end
-- '%d' keeps every digit; Lua's tostring would round to 14.
redis.call('HSET', KEYS[1], 'token', string.format('%d', token), 'fp', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {0, token}
