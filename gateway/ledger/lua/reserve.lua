-- reserve.lua: hold the first chunk of a call, or refuse it with a reason.
--
-- KEYS: the nine call-scoped keys (see _lib.lua K): acct, call, leases, allot, minutes (of the
--       call's UTC month), audit, cdr, outbox, purchases.
-- ARGV: 1 call id, 2 pays ('credits' | 'plan' | 'included'), 3 plan bucket '<plan>:<bucket>'
--       (plan only), 4 licence (1: may continue on credits when minutes run out), 5 connection
--       fee, 6 rate per minute (micro-units), 7 initial increment s, 8 subsequent increment s,
--       9 debit interval s, 10 lease ms, 11 max live calls (0: no limit), 12 daily spend limit
--       (micro-units, 0: none), 13 priority (1: emergency, bypasses every limit), 14 meta (JSON
--       kept for the CDR), 15 refusal retention s.
-- Returns: 'ok|reason|granted_s|held|final|max_s|balance|reserved|seq' (ok 1 or 0; reasons on
--       refusal: no_credit, no_minutes, concurrency, daily_limit).
-- Guarantees: held <= balance - reserved before the call (the balance can never be overdrawn);
--       a replay with the same call id returns the first result and changes nothing; a refusal
--       holds nothing.

local call_id = ARGV[1]
local first = redis.call('HGET', K.call, 'r0')
if first then return first end

local now = now_ms()
local pays, bucket, lic = ARGV[2], ARGV[3], tonumber(ARGV[4])
local c = {fee = tonumber(ARGV[5]), rate = tonumber(ARGV[6]), inc1 = tonumber(ARGV[7]),
           inc2 = tonumber(ARGV[8]), chunk = tonumber(ARGV[9]), cf = -1, mg = 0, g = 0, held = 0}
local lease_ms, max_live, daily_limit = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local emergency = ARGV[13] == '1'

local a = acct_load()
local budget = a.balance - a.reserved
local limited_by_day = false
if daily_limit > 0 and not emergency then
  local day_left = daily_limit - spent_today(a, day_of(now)) - a.reserved
  if day_left < budget then
    budget = math.max(day_left, 0)
    limited_by_day = true
  end
end

local function refuse(reason)
  local r = enc({0, reason, 0, 0, 0, 0, a.balance, a.reserved, 0})
  redis.call('HSET', K.call, 's', pack_call({st = ST.refused}), 'r0', r)
  redis.call('EXPIRE', K.call, tonumber(ARGV[15]))
  return r
end

if not emergency and max_live > 0 and a.live >= max_live then return refuse('concurrency') end

local final, max_s = 0, 0
local function credit_reason()
  if limited_by_day then return 'daily_limit' end
  return 'no_credit'
end

-- Grant a credit segment starting at c.cf of `want` seconds, or the whole increments covered;
-- returns the longest segment the budget allows.
local function grant_credits(want)
  local with_fee = c.cf == 0
  local target = billed(c, want)
  local need = seg_charge(c, target, with_fee)
  if need <= budget then
    c.held = need
    c.g = c.cf + target
  else
    local s = seg_max(c, budget, with_fee)
    if s > 0 then
      c.held = seg_charge(c, s, with_fee)
      c.g = c.cf + s
    end
    final = 1
  end
  return seg_max(c, budget, with_fee)
end

if pays == 'included' then
  c.g, max_s = UNLIMITED, UNLIMITED
elseif pays == 'plan' then
  local pool = redis.call('HMGET', K.minutes, bucket .. ':used', bucket .. ':held')
  local allot = int(redis.call('HGET', K.allot, bucket))
  local remaining = math.max(floor_div(allot - int(pool[1]) - int(pool[2]), 60) * 60, 0)
  local step = ceil_div(c.chunk, 60) * 60
  c.mg = math.min(step, remaining)
  c.g = c.mg
  max_s = remaining
  if c.mg < step then
    if lic == 1 then
      c.cf = c.mg
      local credit_max = grant_credits(c.chunk - c.mg)
      if credit_max >= UNLIMITED then max_s = UNLIMITED else max_s = remaining + credit_max end
    else
      final = 1
    end
  end
  if c.g == 0 then
    if lic == 1 then return refuse(credit_reason()) end
    return refuse('no_minutes')
  end
else
  c.cf = 0
  max_s = grant_credits(c.chunk)
  if c.g == 0 then return refuse(credit_reason()) end
end

a.reserved = a.reserved + c.held
a.live = a.live + 1
acct_save(a)
if c.mg > 0 then redis.call('HINCRBY', K.minutes, bucket .. ':held', fmt(c.mg)) end
redis.call('ZADD', K.leases, fmt(now + lease_ms), call_id)

local r = enc({1, 'ok', c.g, c.held, final, max_s, a.balance, a.reserved, 0})
c.st, c.seq, c.pays, c.lic, c.pg, c.com, c.fin = ST.held, 0, PAYS[pays], lic, 0, 0, final
if emergency then c.emergency = 1 else c.emergency = 0 end
redis.call('HSET', K.call, 's', pack_call(c), 'b', bucket, 'meta', ARGV[14], 'mk', K.minutes, 'r0', r)
return r
