local known = redis.call('HMGET', KEYS[3], 'called', 'state', 'agent')
if known[1] and known[1] ~= ARGV[2] then return {'conflict'} end
if known[3] and known[3] ~= '' and known[3] ~= ARGV[3] then return {'conflict'} end
if known[2] == 'ended' then return {'already'} end
if not known[1] and ARGV[5] ~= '1' then return {'unknown'} end
local held = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local answered = '0'
if known[2] == 'in_progress' then answered = '1' end
redis.call('HSET', KEYS[3], 'called', ARGV[2], 'agent', ARGV[3], 'state', 'ended')
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[4]))
return {'ended', tostring(held), answered}
