#!lua flags=allow-oom
-- Moves the lease end of the claim held with a token to now + lease.
--
-- KEYS: record. ARGV: token (`micros:bits`, see `claim.lua`), lease in ms.
-- Returns 1 or 0 as `complete.lua`.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
