local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known = redis.call('HMGET', KEYS[4], 'called', 'state', 'outcome', 'agent')
if known[1] and known[1] ~= ARGV[2] then return {'conflict'} end
if known[4] and known[4] ~= '' and known[4] ~= ARGV[3] then return {'conflict'} end
if known[2] == 'ended' then return {'ended'} end
if known[1] and known[3] ~= 'answer' then return {'no_slot'} end
local rebuilt = '0'
if not known[1] then
  -- Unknown here (Redis lost it, or it never started): the caller checks
  -- the call against the number's route and asks again to rebuild.
  if ARGV[7] ~= '1' then return {'unknown'} end
  rebuilt = '1'
  redis.call('HSET', KEYS[4], 'called', ARGV[2], 'agent', ARGV[3], 'outcome', 'answer',
    'reason', 'answered', 'transfer', '', 'state', 'ringing')
else
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not score or tonumber(score) <= now then rebuilt = '1' end
end
local expires = tostring(now + tonumber(ARGV[4]))
local remember = tonumber(ARGV[5])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
redis.call('ZADD', KEYS[2], expires, ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
if ARGV[6] == '1' then redis.call('HSET', KEYS[4], 'state', 'in_progress') end
redis.call('HSET', KEYS[4], 'expires', expires)
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], remember) end
return {'alive', expires, rebuilt}
