-- Discards an entry. ARGV: prefix, id. Returns 0 (no such entry), 1
-- (replayed: left alone) or 2 (discarded).
local id = ARGV[2]
local entry = k('entry', id)
local held = redis.call('HMGET', entry, 'state', 'at')
local state = held[1]
if not state then return 0 end
if state == 'replayed' then return 1 end
if state ~= 'discarded' then
  redis.call('HSET', entry, 'state', 'discarded')
  redis.call('HDEL', entry, 'token', 'until')
  redis.call('ZREM', k('ready'), id)
  redis.call('ZREM', k('timed'), id)
  redis.call('ZADD', k('finished'), held[2], id)
  move_state(id, state, 'discarded')
end
return 2
