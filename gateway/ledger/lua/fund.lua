-- fund.lua: add money to an organization's balance (manual top-up, purchase, auto-recharge), or
-- record that an auto-recharge purchase failed.
--
-- KEYS: the nine-key layout of the call scripts, with KEYS[2] the fundings hash instead of a call:
--       acct, fundings, leases, allot, minutes, audit, cdr, outbox, purchases.
-- ARGV: 1 amount (micro-units, > 0), 2 kind ('fund' | 'purchase' | 'recharge' | 'recharge_failed'),
--       3 idempotency key ('' for none), 4 timestamp (ISO 8601), 5 note (for 'recharge_failed':
--       the provider's reason), 6 largest balance allowed.
-- Returns: 'ok|reason|balance|amount' (ok 0 with reason 'too_large' or 'bad_amount'; a
--       'recharge_failed' returns ok 0, reason 'declined', amount 0).
-- Guarantees: one audit entry per funding with the running balance; a funding replayed with the
--       same idempotency key (a retried request, a provider callback delivered twice) returns the
--       first result and adds nothing; a recharge clears the pending-recharge flag so the next
--       crossing of the threshold can start a new purchase. An auto-recharge's outcome ('recharge'
--       or 'recharge_failed') appends exactly one notice to the outbox in the same atomic step:
--       the success and the failure of one purchase share its idempotency key, so whichever is
--       recorded first is the only one. A failure moves no money (no audit entry) and clears the
--       pending-recharge flag too.

local amount, kind, key = tonumber(ARGV[1]), ARGV[2], ARGV[3]
if key ~= '' then
  local first = redis.call('HGET', K.call, key)
  if first then return first end
end
local a = acct_load()
if not amount or amount <= 0 or amount ~= math.floor(amount) then
  return enc({0, 'bad_amount', a.balance, 0})
end
if kind == 'recharge_failed' then
  a.rc_pending = 0
  acct_save(a)
  redis.call('XADD', K.outbox, '*', 'kind', 'recharge_failed', 'amount', fmt(amount), 'balance', fmt(a.balance),
    'reason', ARGV[5], 'ts', ARGV[4])
  local r = enc({0, 'declined', a.balance, 0})
  if key ~= '' then redis.call('HSET', K.call, key, r) end
  return r
end
if a.balance + amount > tonumber(ARGV[6]) then return enc({0, 'too_large', a.balance, 0}) end
a.balance = a.balance + amount
a.funded = a.funded + amount
if kind == 'recharge' then a.rc_pending = 0 end
acct_save(a)
audit(kind, amount, a.balance, '', 0, ARGV[4], ARGV[5])
if kind == 'recharge' then
  redis.call('XADD', K.outbox, '*', 'kind', 'recharge_succeeded', 'amount', fmt(amount), 'balance',
    fmt(a.balance), 'ts', ARGV[4])
end
local r = enc({1, 'ok', a.balance, amount})
if key ~= '' then redis.call('HSET', K.call, key, r) end
return r
