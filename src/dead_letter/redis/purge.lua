-- Deletes up to `batch` finished entries given up on before a time.
-- ARGV: prefix, before in ms (exclusive), batch. Returns how many.
local ids = redis.call('ZRANGEBYSCORE', k('finished'), '-inf', '(' .. ARGV[2],
  'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local entry = k('entry', id)
  local held = redis.call('HMGET', entry, 'state', 'reason', 'host')
  if held[1] then redis.call('ZREM', k('state', held[1]), id) end
  if held[2] then
    redis.call('ZREM', k('reason', held[2]), id)
    if redis.call('HINCRBY', k('reasons'), held[2], -1) <= 0 then
      redis.call('HDEL', k('reasons'), held[2])
    end
  end
  if held[3] then redis.call('ZREM', k('host', held[3]), id) end
  redis.call('ZREM', k('all'), id)
  redis.call('ZREM', k('finished'), id)
  redis.call('DEL', entry)
end
return #ids
