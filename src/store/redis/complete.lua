#!lua
-- Completes the claim held with a token: stores the outcome and replaces the
-- lease with the record's time to live. Completed records have no token, so
-- no token matches them any more.
--
-- KEYS: record. ARGV: token (`micros:bits`, see `claim.lua`), outcome, ttl
-- in ms. Returns 1, or 0 if the token does not hold the record.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'outcome', ARGV[2])
redis.call('HDEL', KEYS[1], 'token')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
