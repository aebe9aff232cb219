-- batch.lua: run several ledger operations, one after another, in one script call.
--
-- KEYS: nine per operation, in the order of the operations: each operation's KEYS as its own
--       script takes them (acct, call or fundings, leases, allot, minutes, audit, cdr, outbox,
--       purchases).
-- ARGV: per operation: the name of its script ('reserve', 'extend', 'settle', 'expire', 'fund',
--       'late_settle'), the number n of its arguments, then its n ARGV.
-- Returns: an array of each operation's own reply, in order; an operation that fails with an
--       error has that error in its place, and the operations after it still run.
-- Guarantees: each operation is exactly its own script's body (same checks, writes and result,
--       same idempotency), so a batch changes nothing but the cost: Redis sets up one script, one
--       KEYS/ARGV pair and one reply per batch instead of one per operation, and the helpers
--       below are made once per batch. The batch is atomic as a whole, so each operation is too.
--       Used by the pipelined client (gateway/ledger/_pipe.py).

local out, i, n_ops = {}, 1, 0
while i <= #ARGV do
  local fn, n = OPS[ARGV[i]], tonumber(ARGV[i + 1])
  bind_keys(n_ops * 9)
  n_ops = n_ops + 1
  local ok, r = pcall(fn, {unpack(ARGV, i + 2, i + 1 + n)})
  if ok then
    out[n_ops] = r
  else
    -- A failed redis.call raises a table {err = ...}; a Lua error raises a string.
    if type(r) == 'table' then r = r.err end
    out[n_ops] = {err = 'ledger ' .. ARGV[i] .. ': ' .. tostring(r)}
  end
  i = i + 2 + n
end
return out
