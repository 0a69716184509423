local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known = redis.call('HMGET', KEYS[4], 'called', 'outcome', 'reason', 'transfer', 'expires', 'state', 'agent', 'version')
if known[1] then
  if known[1] ~= ARGV[2] then return {'conflict'} end
  -- An answered call that has ended (or was ended before its start was
  -- seen) has no slot to give again.
  if known[6] == 'ended' and (not known[2] or known[2] == '' or known[2] == 'answer') then
    return {'ended'}
  end
  return {'replay', known[2], known[3], known[4] or '', known[5] or '0', known[7] or '', known[8] or ''}
end
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local reason = ARGV[8]
if reason == '' then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
    reason = 'organization_at_limit'
  elseif tonumber(ARGV[5]) > 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
    reason = 'agent_at_limit'
  else
    reason = 'answered'
  end
end
local outcome, transfer, expires, state, record = 'answer', '', '0', 'ringing', '1'
local remember = tonumber(ARGV[7])
if reason == 'answered' then
  expires = tostring(now + tonumber(ARGV[6]))
  redis.call('ZADD', KEYS[1], expires, ARGV[1])
  redis.call('ZADD', KEYS[2], expires, ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[3])
  redis.call('PEXPIRE', KEYS[1], remember)
  redis.call('PEXPIRE', KEYS[2], remember)
  redis.call('PEXPIRE', KEYS[3], remember)
else
  state = 'decided'
  if ARGV[9] ~= '' then
    outcome = 'transfer'
    transfer = ARGV[9]
  else
    outcome = 'reject'
  end
  local n = redis.call('HINCRBY', KEYS[5], reason, 1)
  if redis.call('PTTL', KEYS[5]) < 0 then redis.call('PEXPIRE', KEYS[5], 60000) end
  if n > tonumber(ARGV[10]) then record = '0' end
end
redis.call('HSET', KEYS[4], 'called', ARGV[2], 'agent', ARGV[3], 'outcome', outcome,
  'reason', reason, 'transfer', transfer, 'expires', expires, 'state', state, 'version', ARGV[12])
-- A decision that took no slot is remembered for the retry window only.
if reason == 'answered' then
  redis.call('PEXPIRE', KEYS[4], remember)
else
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[11]))
end
return {'new', outcome, reason, transfer, expires, tostring(expired), record}
