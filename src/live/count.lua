local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {'counts', tostring(redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf'))}
for _, agent in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local n = redis.call('ZCOUNT', ARGV[1] .. agent, '(' .. now, '+inf')
  table.insert(out, agent)
  table.insert(out, tostring(n))
end
return out
