-- wrk script for bench/scale/run.sh: ~1 KiB JSON POSTs to /webhooks/bench with an Idempotency-Key.
--
-- Usage:
--   wrk -t2 -c32 -d5s --latency -s bench/scale/scale.lua http://127.0.0.1:PORT -- MODE [key=value ...]
--
-- MODE:
--   replay  every request carries "fill-<n>", n uniformly random in 1..N: keys that are stored in
--           the database built by run.sh, so every answer should be a replay
--   new     every request carries "new-<run>-<thread>-<counter>": a key never sent before
-- Options:
--   n=N       number of stored keys for replay mode (required for replay)
--   run=ID    run id in new keys; pass a fresh one per wrk run (default: time + random)
--   path=P    request path (default /webhooks/bench)
--
-- Every response is checked: statuses outside 2xx are counted, and so are answers that carry
-- `Idempotent-Replayed: true`. done() prints one machine-readable line:
--   RESULT rps=... p50_us=... p99_us=... non2xx=... requests=... errors=... replayed=... mode=...
-- (errors = socket errors: connect + read + write + timeout.)

local BODY_BYTES = 1024

-- ------------------------------------------------------------------ setup (main state)
local threads = {}
local next_id = 0

function setup(thread)
   thread:set("thread_id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

-- ------------------------------------------------------------------ per-thread state
-- Globals, so that done() can read them back with thread:get().
mode = nil
non2xx_count, replayed_count = 0, 0

local n_keys, run_id, path
local head, tail
local counter = 0

local function opt(args, name, default)
   for _, a in pairs(args) do -- wrk passes the arguments 0-indexed
      local k, v = string.match(a, "^([%w_]+)=(.*)$")
      if k == name then return v end
   end
   return default
end

-- A Stripe-shaped event, padded with spaces inside a string to exactly BODY_BYTES bytes.
local function make_body()
   local pre = '{"id":"evt_1PbenchScale0000000","object":"event","api_version":"2024-06-20",'
      .. '"created":1718000000,"type":"invoice.paid","livemode":false,"pending_webhooks":1,'
      .. '"data":{"object":{"id":"in_1PbenchInvoice0000000000","object":"invoice",'
      .. '"amount_due":2000,"amount_paid":2000,"currency":"usd","customer":"cus_Qbench000000000",'
      .. '"status":"paid","description":"'
   local post = '"}}}'
   local pad = BODY_BYTES - #pre - #post
   if pad < 0 then pad = 0 end
   return pre .. string.rep("x", pad) .. post
end

function init(args)
   args = args or {}
   for _, a in pairs(args) do
      if a == "replay" or a == "new" then mode = a end
   end
   if mode == nil then error("scale.lua: give a mode: replay | new") end
   n_keys = tonumber(opt(args, "n", "0"))
   if mode == "replay" and (n_keys == nil or n_keys < 1) then
      error("scale.lua: replay mode needs n=N (number of stored keys)")
   end
   local tid = thread_id or 0
   run_id = opt(args, "run", string.format("r%d%05d", os.time(), math.random(0, 99999)))
   path = opt(args, "path", "/webhooks/bench")
   math.randomseed(os.time() * 1000 + tid * 7919 + math.floor(os.clock() * 1e6))

   local host = wrk.headers["Host"] or (wrk.host .. ":" .. tostring(wrk.port))
   local body = make_body()
   -- request = head .. key .. tail; the key is only in the header, so the framing is constant.
   head = "POST " .. path .. " HTTP/1.1\r\n"
      .. "Host: " .. host .. "\r\n"
      .. "Content-Type: application/json\r\n"
      .. "Content-Length: " .. tostring(#body) .. "\r\n"
      .. "Idempotency-Key: "
   tail = "\r\n\r\n" .. body
   if mode == "new" then
      local prefix = string.format("new-%s-%d-", run_id, tid)
      request = function()
         counter = counter + 1
         return head .. prefix .. counter .. tail
      end
   else
      request = function()
         return head .. "fill-" .. math.random(n_keys) .. tail
      end
   end
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx_count = non2xx_count + 1
   end
   local r = headers["idempotent-replayed"] or headers["Idempotent-Replayed"]
   if r == "true" then
      replayed_count = replayed_count + 1
   end
end

-- ------------------------------------------------------------------ done (main state)
function done(summary, latency, requests)
   local secs = summary.duration / 1e6
   local rps = 0
   if secs > 0 then rps = summary.requests / secs end
   local e = summary.errors
   local non2xx, replayed, m = 0, 0, "?"
   for _, t in ipairs(threads) do
      non2xx = non2xx + (t:get("non2xx_count") or 0)
      replayed = replayed + (t:get("replayed_count") or 0)
      m = t:get("mode") or m
   end
   io.write(string.format(
      "RESULT rps=%.1f p50_us=%d p99_us=%d non2xx=%d requests=%d errors=%d replayed=%d mode=%s\n",
      rps, latency:percentile(50.0), latency:percentile(99.0), non2xx, summary.requests,
      e.connect + e.read + e.write + e.timeout, replayed, m))
end
