-- Definitions every script starts with. `ARGV[1]` is always the prefix in
-- braces (the queue's hash tag), `KEYS[1]` the `all` index under it, which
-- routes the script to the queue's slot on a Redis Cluster.
--
-- Besides one hash per entry (`{prefix}:entry:{id}`), the queue keeps sorted
-- sets of ids, scored by id unless said otherwise: `all`, `state:{state}`,
-- `reason:{reason}`, `host:{host}` (the page indexes), `ready` (leasable
-- now), `timed` (leased or failed again, scored by the time they become
-- leasable), `finished` (replayed or discarded, scored by the give-up time,
-- for purge); the hash `reasons` counts entries per reason.
local prefix = ARGV[1]
local function k(...) return prefix .. ':' .. table.concat({...}, ':') end
-- Numbers go to commands through this: '%d' keeps every digit, where
-- Lua's own conversion rounds to 14 and may use an exponent.
local function fmt(n) return string.format('%d', n) end
-- Redis's clock, so that every instance sharing the queue agrees on leases.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function move_state(id, from, to)
  redis.call('ZREM', k('state', from), id)
  redis.call('ZADD', k('state', to), id, id)
end
local function read(id)
  local entry = redis.call('HMGET', k('entry', id), unpack(FIELDS))
  table.insert(entry, 1, id)
  return entry
end
