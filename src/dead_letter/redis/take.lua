-- What both lease scripts share: `take(id, state, until_ms)` leases the
-- entry `id`, now in `state`, until `until_ms` with a fresh token, and
-- returns the `{token, entry}` pair the scripts reply with.
local function take(id, state, until_ms)
  local entry = k('entry', id)
  local token = redis.call('INCR', k('token'))
  if token == 1 then
    -- The counter was lost: restart it above every token it could have
    -- handed out, so a stale holder never matches a new lease.
    local t = redis.call('TIME')
    redis.call('SET', k('token'), t[1] .. string.format('%06d', tonumber(t[2])))
    token = redis.call('INCR', k('token'))
  end
  redis.call('HSET', entry, 'state', 'leased', 'until', fmt(until_ms), 'token', fmt(token))
  move_state(id, state, 'leased')
  redis.call('ZREM', k('ready'), id)
  -- Replaces a retry time or an expired lease's end the entry may still have.
  redis.call('ZADD', k('timed'), fmt(until_ms), id)
  return {token, read(id)}
end
