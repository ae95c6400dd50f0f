-- Leases up to `max` leasable entries, lowest id first. ARGV: prefix, max,
-- lease in ms. Returns `{token, entry}` pairs.
local now = now_ms()
-- Leases that ran out and retry times that passed make their entries ready.
local due = redis.call('ZRANGEBYSCORE', k('timed'), '-inf', fmt(now))
for _, id in ipairs(due) do redis.call('ZADD', k('ready'), id, id) end
if #due > 0 then redis.call('ZREMRANGEBYSCORE', k('timed'), '-inf', fmt(now)) end
local until_ms = now + tonumber(ARGV[3])
local leases = {}
for _, id in ipairs(redis.call('ZRANGE', k('ready'), 0, fmt(tonumber(ARGV[2]) - 1))) do
  local state = redis.call('HGET', k('entry', id), 'state')
  if not state then
    return redis.error_reply('ERR dead letter ' .. k('entry', id) .. ' is indexed but missing')
  end
  leases[#leases + 1] = take(id, state, until_ms)
end
return leases
