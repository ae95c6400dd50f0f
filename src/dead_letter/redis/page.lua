-- One page. ARGV: prefix, after (exclusive), limit, then filter pairs
-- (`state`/`reason`/`host`, value). Walks the smallest matching index from
-- the cursor, checking the other filters on each entry. Returns
-- `{more, entries}`, `more` 1 when a further match exists.
local limit = tonumber(ARGV[3])
local filters, index, smallest = {}, k('all'), nil
for i = 4, #ARGV, 2 do
  filters[#filters + 1] = {ARGV[i], ARGV[i + 1]}
  local set = k(ARGV[i], ARGV[i + 1])
  local n = redis.call('ZCARD', set)
  if not smallest or n < smallest then index, smallest = set, n end
end
local entries, more, from = {}, 0, '(' .. ARGV[2]
local chunk = math.max(limit + 1, 128)
while more == 0 do
  local ids = redis.call('ZRANGEBYSCORE', index, from, '+inf', 'LIMIT', 0, fmt(chunk))
  for _, id in ipairs(ids) do
    local matches = true
    for _, filter in ipairs(filters) do
      if redis.call('HGET', k('entry', id), filter[1]) ~= filter[2] then
        matches = false
        break
      end
    end
    if matches then
      if #entries == limit then
        more = 1
        break
      end
      entries[#entries + 1] = read(id)
    end
  end
  if #ids < chunk then break end
  from = '(' .. ids[#ids]
end
return {more, entries}
