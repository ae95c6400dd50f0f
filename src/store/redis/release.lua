#!lua flags=allow-oom
-- Deletes the record of the claim held with a token.
--
-- KEYS: record. ARGV: token (`micros:bits`, see `claim.lua`).
-- Returns 1 or 0 as `complete.lua`.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
