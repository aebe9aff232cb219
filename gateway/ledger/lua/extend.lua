-- extend.lua: commit the chunk just used and hold the next one of a live call.
--
-- KEYS: the nine call-scoped keys (acct, call, leases, allot, minutes of the call's month, audit,
--       cdr, outbox, purchases).
-- ARGV: 1 call id, 2 seq (1, 2, ...: one more than the last applied), 3 lease ms, 4 daily spend
--       limit (micro-units, 0: none), 5 timestamp (ISO 8601, for the audit entry).
-- Returns: 'ok|reason|granted_s|held|final|max_s|balance|reserved|seq' where granted_s is the
--       call's paid-through second counted from answer. reason 'ok' (a full chunk), 'final' (the
--       whole increments still covered, or nothing more: granted_s unchanged), or on ok=0
--       'unknown_call', 'settled', 'bad_seq'.
-- Guarantees: what is committed (debited) is the price of the call up to the start of the chunk
--       now running, which the call has certainly used; the next hold never exceeds the available
--       balance; a replay of a seq already applied returns its first result and changes nothing;
--       after a final grant an extend holds and commits nothing (the call ends at granted_s).

local call_id, seq = ARGV[1], tonumber(ARGV[2])
local c, stored = load_call(K.call, 'r' .. ARGV[2])
if not c or c.st == ST.refused then return enc({0, 'unknown_call', 0, 0, 0, 0, 0, 0, seq}) end
if stored then return stored end
if c.st == ST.done then return enc({0, 'settled', c.g, c.held, 1, 0, 0, 0, seq}) end
if seq ~= c.seq + 1 then return enc({0, 'bad_seq', c.g, c.held, 0, 0, 0, 0, c.seq}) end

local now = now_ms()
local lease_at = fmt(now + tonumber(ARGV[3]))
local a = acct_load()
if c.fin == 1 then
  -- The last grant was final: nothing more to hold and nothing to commit before the settle.
  redis.call('ZADD', K.leases, lease_at, call_id)
  local r = enc({1, 'final', c.g, c.held, 1, 0, a.balance, a.reserved, seq})
  c.seq = seq
  redis.call('HSET', K.call, 's', pack_call(c), 'r' .. ARGV[2], r)
  return r
end
local ts = ARGV[5]
local today = day_of(now)
local daily_limit = tonumber(ARGV[4])

-- 1. Commit: everything up to the start of the running chunk has been used.
local used = math.min(used_money(c, c.pg), c.held)
local commit = used - c.com
if commit > 0 then
  a.reserved = a.reserved - commit
  debit(a, commit, today, call_id, seq, ts, 'chunk')
  c.com = used
end

-- 2. Hold the next chunk.
local budget = a.balance - a.reserved
if daily_limit > 0 and c.emergency ~= 1 then
  budget = math.min(budget, math.max(daily_limit - spent_today(a, today) - a.reserved, 0))
end

local final, reason = 0, 'ok'
local new_g, new_held = c.g, c.held

local function extend_credits(want_total)
  -- want_total: the segment length (from c.cf) this chunk should reach
  local with_fee = c.cf == 0
  local target = billed(c, want_total)
  local need = seg_charge(c, target, with_fee) - c.held
  if need <= budget then
    new_held = c.held + need
    new_g = c.cf + target
  else
    local s = seg_max(c, c.held + budget, with_fee)
    if s > new_g - c.cf then
      new_held = seg_charge(c, s, with_fee)
      new_g = c.cf + s
    end
    final, reason = 1, 'final'
  end
end

if c.pays == PAYS.included then
  new_g = UNLIMITED
elseif c.cf < 0 then
  -- Still on plan minutes: take whole minutes from the pool while they last.
  local pool = redis.call('HMGET', K.minutes, c.bucket .. ':used', c.bucket .. ':held')
  local allot = int(redis.call('HGET', K.allot, c.bucket))
  local remaining = math.max(floor_div(allot - int(pool[1]) - int(pool[2]), 60) * 60, 0)
  local step = ceil_div(c.chunk, 60) * 60
  local take = math.min(step, remaining)
  if take > 0 then
    redis.call('HINCRBY', K.minutes, c.bucket .. ':held', fmt(take))
    c.mg = c.mg + take
    new_g = c.g + take
  end
  if take < step then
    if c.lic == 1 then
      -- Minutes ran out mid-call: the rest of the call continues on credits, no fee at the switch.
      c.cf = new_g
      extend_credits(step - take)
    else
      final, reason = 1, 'final'
    end
  end
else
  extend_credits(c.g - c.cf + c.chunk)
end

a.reserved = a.reserved + new_held - c.held
acct_save(a)
redis.call('ZADD', K.leases, lease_at, call_id)

local r = enc({1, reason, new_g, new_held, final, 0, a.balance, a.reserved, seq})
c.st, c.seq, c.pg, c.g, c.held, c.fin = ST.live, seq, c.g, new_g, new_held, final
redis.call('HSET', K.call, 's', pack_call(c), 'r' .. ARGV[2], r)
return r
