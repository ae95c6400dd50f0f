-- Counts. ARGV: prefix, then every state's name. Returns the count per
-- state in that order, and the `reasons` hash as name/count pairs.
local states = {}
for i = 2, #ARGV do states[#states + 1] = redis.call('ZCARD', k('state', ARGV[i])) end
return {states, redis.call('HGETALL', k('reasons'))}
