-- _lib.lua: helpers prepended to every ledger script (the loader joins this file and the script).
--
-- Lua in Redis has only doubles: every integer below 2^53 is exact, and the ledger keeps all
-- amounts (micro-units) and durations (seconds) below that bound; fund.lua refuses a balance
-- that would pass it. Integers are written back with string.format('%d'), never tostring(),
-- which would print large values with an exponent.

-- Scripts read TIME and then write: replicate their effects, not the script (a no-op on 7.x).
if redis.replicate_commands then pcall(redis.replicate_commands) end

-- Twin of rating_core.UNLIMITED_SECONDS (= MAX_CALL_SECONDS): "no limit the balance imposes".
local UNLIMITED = 100000000

local function int(v)
  if not v then return 0 end
  return tonumber(v) or 0
end

local function fmt(n)
  return string.format('%d', n)
end

-- Redis server time in ms: every gateway process and the sweeper agree on it.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function floor_div(a, b)
  local q = math.floor(a / b)
  while q * b > a do q = q - 1 end
  while (q + 1) * b <= a do q = q + 1 end
  return q
end

local function ceil_div(a, b)
  local q = floor_div(a, b)
  if q * b < a then q = q + 1 end
  return q
end

-- The deck's rounding rule, twin of rating_core.billed_seconds: the first increment is billed
-- whole (also for a zero-second answered call), then whole subsequent increments.
local function billed(c, secs)
  if secs <= c.inc1 then return c.inc1 end
  return c.inc1 + ceil_div(secs - c.inc1, c.inc2) * c.inc2
end

-- ceil(rate * bill / 60) without forming rate * bill, which may pass 2^53.
local function price(rate, bill)
  local m = floor_div(bill, 60)
  return rate * m + ceil_div(rate * (bill - m * 60), 60)
end

-- Charge of a credit segment of `secs` seconds; the connection fee only when the call began on
-- credits (a call that moved from plan minutes to credits pays no fee at the switch).
local function seg_charge(c, secs, with_fee)
  local amt = price(c.rate, billed(c, secs))
  if with_fee then amt = amt + c.fee end
  return amt
end

-- Longest segment, in whole increments, whose charge fits `budget`; 0 when even the first
-- increment does not fit; UNLIMITED for a free rate. Twin of rating_core.max_seconds.
local function seg_max(c, budget, with_fee)
  local fee = 0
  if with_fee then fee = c.fee end
  if budget < fee + price(c.rate, c.inc1) then return 0 end
  if c.rate == 0 then return UNLIMITED end
  -- A float guess from the exact inverse, then exact integer checks around it.
  local k = math.floor(((budget - fee) * 60 / c.rate - c.inc1) / c.inc2)
  if k < 0 then k = 0 end
  if c.inc1 + k * c.inc2 >= UNLIMITED then return UNLIMITED end
  while k > 0 and fee + price(c.rate, c.inc1 + k * c.inc2) > budget do k = k - 1 end
  while fee + price(c.rate, c.inc1 + (k + 1) * c.inc2) <= budget do
    k = k + 1
    if c.inc1 + k * c.inc2 >= UNLIMITED then return UNLIMITED end
  end
  return c.inc1 + k * c.inc2
end

local function load_call(key)
  local h = redis.call('HGETALL', key)
  if #h == 0 then return nil end
  local c = {}
  for i = 1, #h, 2 do c[h[i]] = h[i + 1] end
  for _, f in ipairs({'fee', 'rate', 'inc1', 'inc2', 'chunk', 'g', 'pg', 'mg', 'cf', 'held', 'com', 'seq', 'lic'}) do
    c[f] = int(c[f])
  end
  return c
end

-- Price of the first `s` seconds of this answered call under its plan/credit split.
local function used_money(c, s)
  if c.cf < 0 then return 0 end
  if c.cf == 0 then return seg_charge(c, s, true) end
  if s <= c.cf then return 0 end
  return seg_charge(c, s - c.cf, false)
end

-- Seconds billed for an answered call of `s` seconds (for the CDR).
local function billed_total(c, s)
  if c.pays == 'included' then return s end
  local mins = 0
  if c.mg > 0 then mins = math.min(ceil_div(math.min(s, c.mg), 60) * 60, c.mg) end
  if c.cf < 0 then return mins end
  if c.cf == 0 then return billed(c, s) end
  if s <= c.cf then return mins end
  return c.cf + billed(c, s - c.cf)
end

-- Results travel as one '|'-joined string so that a replay can return the stored first result
-- byte for byte (cjson would round large integers).
local function enc(t)
  local parts = {}
  for i = 1, #t do
    local v = t[i]
    if type(v) == 'number' then parts[i] = fmt(v) else parts[i] = tostring(v) end
  end
  return table.concat(parts, '|')
end

-- The fixed KEYS of every call-scoped script.
local K = {
  acct = KEYS[1], call = KEYS[2], leases = KEYS[3], allot = KEYS[4], minutes = KEYS[5],
  spend = KEYS[6], audit = KEYS[7], cdr = KEYS[8], outbox = KEYS[9], purchases = KEYS[10],
}

local function audit(kind, amount, balance, call, seq, ts, note)
  redis.call('XADD', K.audit, '*', 'type', kind, 'amount', fmt(amount), 'balance', fmt(balance),
    'call', call, 'seq', fmt(seq), 'ts', ts, 'note', note)
end

-- Debit `amount` (negative: refund) already released from the reservations; keeps the account
-- totals, the daily spend and the audit stream in step, and decides auto-recharge and the
-- balance-reached-zero notice inside the same atomic step (so many calls crossing at once
-- start exactly one purchase).
local function debit(amount, call, seq, ts, note)
  if amount == 0 then return int(redis.call('HGET', K.acct, 'balance')) end
  local before = int(redis.call('HGET', K.acct, 'balance'))
  local after = redis.call('HINCRBY', K.acct, 'balance', fmt(-amount))
  redis.call('HINCRBY', K.acct, 'spent', fmt(amount))
  redis.call('INCRBY', K.spend, fmt(amount))
  redis.call('EXPIRE', K.spend, 259200)
  local kind = 'debit'
  if amount < 0 then kind = 'refund' end
  audit(kind, -amount, after, call, seq, ts, note)
  local th = int(redis.call('HGET', K.acct, 'rc_threshold'))
  local ra = int(redis.call('HGET', K.acct, 'rc_amount'))
  if ra > 0 and before >= th and after < th and redis.call('HGET', K.acct, 'rc_pending') ~= '1' then
    redis.call('HSET', K.acct, 'rc_pending', '1')
    redis.call('XADD', K.purchases, '*', 'kind', 'recharge', 'amount', fmt(ra), 'balance', fmt(after),
      'ts', ts)
  end
  if before > 0 and after == 0 then
    redis.call('XADD', K.outbox, '*', 'kind', 'balance_zero', 'balance', '0', 'ts', ts)
  end
  return after
end
