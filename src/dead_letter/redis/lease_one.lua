-- Leases one entry even before its retry time. ARGV: prefix, id, lease in
-- ms. Returns 0 (no such entry), 1 (finished, or held by a live lease) or
-- the `{token, entry}` pair.
local id = ARGV[2]
local held = redis.call('HMGET', k('entry', id), 'state', 'until')
local state = held[1]
if not state then return 0 end
local now = now_ms()
-- A lease whose end has passed is free, as the batch lease finds it once
-- `timed` hands it back to `ready`.
local free = state == 'leased' and held[2] and tonumber(held[2]) <= now
if state ~= 'pending' and state ~= 'failed_again' and not free then return 1 end
return take(id, state, now + tonumber(ARGV[3]))
