-- Ends the lease held with a token, appending the replay to the history.
-- ARGV: prefix, id, token, new state (`replayed` or `failed_again`), the
-- history record's JSON members after `at_ms`, then the replay status
-- (replayed) or the retry delay in ms (failed again). Returns 1, or 0 if
-- the token does not hold the entry.
local id, token, to, record = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local entry = k('entry', id)
local held = redis.call('HMGET', entry, 'state', 'token', 'history', 'at')
if held[1] ~= 'leased' or held[2] ~= token then return 0 end
if not held[3] or not held[4] then
  return redis.error_reply('ERR dead letter ' .. entry .. ' has no history or time')
end
local now = now_ms()
record = '{"at_ms":' .. fmt(now) .. ',' .. record .. '}'
local history = held[3]
if history == '[]' then
  history = '[' .. record .. ']'
else
  history = string.sub(history, 1, -2) .. ',' .. record .. ']'
end
redis.call('HDEL', entry, 'token', 'until')
redis.call('ZREM', k('ready'), id)
redis.call('ZREM', k('timed'), id)
if to == 'replayed' then
  redis.call('HSET', entry, 'state', to, 'status', ARGV[6], 'history', history)
  redis.call('ZADD', k('finished'), held[4], id)
else
  local retry_at = now + tonumber(ARGV[6])
  redis.call('HSET', entry, 'state', to, 'until', fmt(retry_at), 'history', history)
  redis.call('ZADD', k('timed'), fmt(retry_at), id)
end
move_state(id, 'leased', to)
return 1
