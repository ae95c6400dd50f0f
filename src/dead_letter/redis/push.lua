-- Stores a new pending entry. ARGV: prefix, reason, host or '' (with
-- `has_host` '1'/'0'), then the entry's field/value pairs. Returns the id.
local reason, has_host, host = ARGV[2], ARGV[3] == '1', ARGV[4]
local id = redis.call('INCR', k('id'))
if id == 1 then
  -- The counter was lost (flushed, deleted) but entries may remain: carry on
  -- above the highest, so an id never names two entries.
  local top = redis.call('ZRANGE', k('all'), -1, -1)
  if top[1] then
    id = tonumber(top[1]) + 1
    redis.call('SET', k('id'), fmt(id))
  end
end
id = fmt(id)
local entry = k('entry', id)
redis.call('HSET', entry, 'state', 'pending', 'history', '[]', unpack(ARGV, 5))
redis.call('ZADD', k('all'), id, id)
redis.call('ZADD', k('state', 'pending'), id, id)
redis.call('ZADD', k('ready'), id, id)
redis.call('ZADD', k('reason', reason), id, id)
redis.call('HINCRBY', k('reasons'), reason, 1)
if has_host then
  redis.call('HSET', entry, 'host', host)
  redis.call('ZADD', k('host', host), id, id)
end
return tonumber(id)
