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

-- A call's state is one packed field ('s') of its hash (17 signed 64-bit integers), read with
-- HMGET next to the few other fields a script needs: unpacking it is far cheaper inside Redis than
-- HGETALL of a wide hash or splitting text. Mirrored by CALL_FIELDS in gateway/ledger/client.py.
local CALL_FORMAT = '<i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8i8'
local ST = {refused = 0, held = 1, live = 2, done = 3}
local PAYS = {credits = 1, plan = 2, included = 3}

-- Field by field, in this order: st, seq, pays, lic, fee, rate, inc1, inc2, chunk, g, pg, mg, cf,
-- held, com, fin, emergency. Spelled out rather than looped over a name list: a table built by
-- one constructor is markedly cheaper inside Redis, and this runs in every call script.
local function unpack_call(s)
  local st, seq, pays, lic, fee, rate, inc1, inc2, chunk, g, pg, mg, cf, held, com, fin, emergency =
    struct.unpack(CALL_FORMAT, s)
  return {st = st, seq = seq, pays = pays, lic = lic, fee = fee, rate = rate, inc1 = inc1, inc2 = inc2,
          chunk = chunk, g = g, pg = pg, mg = mg, cf = cf, held = held, com = com, fin = fin,
          emergency = emergency}
end

local function pack_call(c)
  return struct.pack(CALL_FORMAT, c.st or 0, c.seq or 0, c.pays or 0, c.lic or 0, c.fee or 0, c.rate or 0,
    c.inc1 or 0, c.inc2 or 0, c.chunk or 0, c.g or 0, c.pg or 0, c.mg or 0, c.cf or 0, c.held or 0,
    c.com or 0, c.fin or 0, c.emergency or 0)
end

-- The call (nil when unknown), its plan bucket, and the values of `...`, further hash fields.
local function load_call(key, ...)
  local v = redis.call('HMGET', key, 's', 'b', ...)
  local c = nil
  if v[1] then
    c = unpack_call(v[1])
    c.bucket = v[2] or ''
  end
  return c, v[3], v[4]
end

-- Price of the first `s` seconds of this answered call under its plan/credit split.
local function used_money(c, s)
  if c.cf < 0 then return 0 end
  if c.cf == 0 then return seg_charge(c, s, true) end
  if s <= c.cf then return 0 end
  return seg_charge(c, s - c.cf, false)
end

-- What paid, for the CDR: credits, plan, plan+credits (minutes ran out mid-call) or included.
local function paid_label(c)
  if c.pays == PAYS.included then return 'included' end
  if c.cf == 0 then return 'credits' end
  if c.cf > 0 then return 'plan+credits' end
  return 'plan'
end

-- Seconds billed for an answered call of `s` seconds (for the CDR).
local function billed_total(c, s)
  if c.pays == PAYS.included then return s end
  local mins = 0
  if c.mg > 0 then mins = math.min(ceil_div(math.min(s, c.mg), 60) * 60, c.mg) end
  if c.cf < 0 then return mins end
  if c.cf == 0 then return billed(c, s) end
  if s <= c.cf then return mins end
  return c.cf + billed(c, s - c.cf)
end

-- Results travel as nine signed 64-bit integers packed with struct (C, cheap inside Redis), so
-- that a replay returns the stored first result byte for byte. Reasons are small codes: the
-- table is mirrored in gateway/ledger/client.py (REASONS).
local R = {ok = 0, final = 1, no_credit = 2, no_minutes = 3, concurrency = 4, daily_limit = 5,
           unknown_call = 6, settled = 7, bad_seq = 8, not_due = 9, gone = 10, too_large = 11,
           bad_amount = 12, fail_open = 13, declined = 14}
local RESULT = '<i8i8i8i8i8i8i8i8i8'

local function enc(t)
  return struct.pack(RESULT, t[1], R[t[2]], t[3] or 0, t[4] or 0, t[5] or 0, t[6] or 0, t[7] or 0,
    t[8] or 0, t[9] or 0)
end

-- The fixed KEYS of every call-scoped script (fund.lua: K.call is the fundings hash). batch.lua
-- runs several operations in one script, each with nine keys of its own: bind_keys(base) points K
-- at KEYS[base + 1] .. KEYS[base + 9] before each one.
local K = {}
local function bind_keys(base)
  K.acct, K.call, K.leases, K.allot, K.minutes, K.audit, K.cdr, K.outbox, K.purchases =
    KEYS[base + 1], KEYS[base + 2], KEYS[base + 3], KEYS[base + 4], KEYS[base + 5], KEYS[base + 6],
    KEYS[base + 7], KEYS[base + 8], KEYS[base + 9]
end
bind_keys(0)

-- The account's money is one packed field ('v') read once and written once per script; the
-- recharge settings beside it are plain fields the admin tools write. Mirrored by ACCT_FIELDS in
-- gateway/ledger/client.py.
local ACCT_FORMAT = '<i8i8i8i8i8i8i8i8'

-- Fields in order: balance, reserved, live, funded, spent, sday, sdayamt, rc_pending.
local function acct_load()
  local v = redis.call('HMGET', K.acct, 'v', 'rc_threshold', 'rc_amount')
  local balance, reserved, live, funded, spent, sday, sdayamt, rc_pending = 0, 0, 0, 0, 0, 0, 0, 0
  if v[1] then
    balance, reserved, live, funded, spent, sday, sdayamt, rc_pending = struct.unpack(ACCT_FORMAT, v[1])
  end
  return {balance = balance, reserved = reserved, live = live, funded = funded, spent = spent, sday = sday,
          sdayamt = sdayamt, rc_pending = rc_pending, rc_threshold = int(v[2]), rc_amount = int(v[3])}
end

local function acct_save(a)
  redis.call('HSET', K.acct, 'v', struct.pack(ACCT_FORMAT, a.balance, a.reserved, a.live, a.funded, a.spent,
    a.sday, a.sdayamt, a.rc_pending))
end

-- UTC day number of a Redis time in ms, for the daily spend limit.
local function day_of(ms)
  return math.floor(ms / 86400000)
end

-- What the organization has spent today (the counter restarts on a new UTC day).
local function spent_today(a, today)
  if a.sday == today then return a.sdayamt end
  return 0
end

local function audit(kind, amount, balance, call, seq, ts, note)
  redis.call('XADD', K.audit, '*', 'type', kind, 'amount', fmt(amount), 'balance', fmt(balance),
    'call', call, 'seq', fmt(seq), 'ts', ts, 'note', note)
end

-- Debit `amount` (negative: refund), already released from the reservations, from the loaded
-- account `a` (saved by the caller); appends the audit entry with the running balance, and decides
-- auto-recharge and the balance-reached-zero notice inside the same atomic step (so many calls
-- crossing the threshold at once start exactly one purchase).
local function debit(a, amount, today, call, seq, ts, note)
  if amount == 0 then return a.balance end
  local before = a.balance
  a.balance = before - amount
  a.spent = a.spent + amount
  if a.sday ~= today then a.sday, a.sdayamt = today, 0 end
  a.sdayamt = a.sdayamt + amount
  local kind = 'debit'
  if amount < 0 then kind = 'refund' end
  audit(kind, -amount, a.balance, call, seq, ts, note)
  local th = a.rc_threshold
  if a.rc_amount > 0 and before >= th and a.balance < th and a.rc_pending ~= 1 then
    a.rc_pending = 1
    redis.call('XADD', K.purchases, '*', 'kind', 'recharge', 'amount', fmt(a.rc_amount),
      'balance', fmt(a.balance), 'ts', ts)
  end
  if before > 0 and a.balance == 0 then
    redis.call('XADD', K.outbox, '*', 'kind', 'balance_zero', 'balance', '0', 'ts', ts)
  end
  return a.balance
end
