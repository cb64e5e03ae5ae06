-- wrk script: webhook-shaped JSON POSTs (~1 KiB, or size=N) to /webhooks/bench with an Idempotency-Key.
--
-- Usage:
--   wrk -t2 -c32 -d5s --latency -s bench/wrk/webhook.lua http://127.0.0.1:18081 -- MODE [key=value ...]
--
-- MODE (or mode=MODE, or env WEBHOOK_MODE; default new):
--   new   every request carries a key never sent before
--   dup   every request carries one of HOT hot keys (pre-warm them with `warm` first)
--   mix   90% one of the hot keys, 10% a new key
--   warm  one request per hot key, in order, then the thread stops (use with -t1 -c1)
--   fill  count=N new keys per thread, then the thread's first key again (a duplicate: answered,
--         stores nothing) until N first-seen answers (2xx without Idempotent-Replayed) are in;
--         then the thread appends a line to done=FILE and stops. wrk itself still runs for -d:
--         the caller sends it SIGINT once FILE has one line per thread (bench/async.sh).
-- Options (key=value; env fallback in brackets):
--   run=ID      run id that prefixes every new key [WEBHOOK_RUN_ID; default: time + random]
--               Pass a fresh one per wrk run so no run reuses the keys of another.
--   hot=PREFIX  prefix of the hot keys [WEBHOOK_HOT; default "hot"]
--   hotn=N      number of hot keys [WEBHOOK_HOTN; default 100]
--   dup=P       share of hot keys in mix mode, 0..1 [WEBHOOK_DUP; default 0.9]
--   path=PATH   request path [WEBHOOK_PATH; default /webhooks/bench]
--   size=BYTES  body size, padded [WEBHOOK_SIZE; default 1024]
--   count=N     fill: first-seen keys per thread [WEBHOOK_COUNT; default 1000]
--   done=FILE   fill: where each thread appends a line once done [WEBHOOK_DONE]
--   check=1     count non-2xx and `Idempotent-Replayed: true` answers in response()
--               [WEBHOOK_CHECK]. Makes wrk parse every response for Lua; the cost was within
--               run-to-run noise here. Without it non2xx is wrk's count of statuses > 399.
--
-- done() prints one machine-readable line:
--   RESULT rps=... p50_us=... p99_us=... non2xx=... requests=... errors=... replayed=... mode=...
-- (replayed=-1 when check is off.)
--
-- Keys: new keys are "<run>-t<thread>-<9-digit counter>", so they are unique per run and per
-- thread; hot keys are "<hot>-<3-digit index>", the same for every thread and every run that
-- passes the same hot prefix.

local target_body = 1024

-- ---------------------------------------------------------------- setup phase (main env)
local threads = {}
local next_id = 0
local setup_run_id = nil

function setup(thread)
   if setup_run_id == nil then
      math.randomseed(os.time())
      setup_run_id = string.format("r%d%05d", os.time(), math.random(0, 99999))
   end
   thread:set("thread_id", next_id)
   thread:set("default_run_id", setup_run_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

-- ---------------------------------------------------------------- running phase (per thread)
-- Globals (not locals) where done() reads them back through thread:get().
mode, check = nil, false
non2xx_count, replayed_count = 0, 0

local run_id, hot_prefix, hot_n, dup_share, path
local hot_requests = {}
local new_a, new_b, new_c, new_prefix
local counter = 0
local hot_next = 0
local warm_seen = 0
local fill_count, fill_done, fill_first
local fill_acked = 0

-- wrk passes the script arguments as args[1..n] (args[0] is the URL).
local function opt(args, name, env, default)
   for _, a in ipairs(args) do
      local k, v = string.match(a, "^([%w_]+)=(.*)$")
      if k == name then return v end
   end
   local e = os.getenv(env)
   if e ~= nil and e ~= "" then return e end
   return default
end

-- A Stripe-like event whose JSON is padded to target_body bytes. Returns the two halves
-- around the key: body = pre .. key .. post.
local function body_parts(key_len)
   local pre = '{"id":"evt_'
   local mid = '","object":"event","api_version":"2024-06-20","created":1718000000,'
      .. '"type":"invoice.paid","livemode":false,"pending_webhooks":1,'
      .. '"request":{"id":null,"idempotency_key":null},'
      .. '"data":{"object":{"id":"in_1PbenchInvoice0000000000","object":"invoice",'
      .. '"amount_due":2000,"amount_paid":2000,"currency":"usd",'
      .. '"customer":"cus_Qbench000000000","status":"paid","padding":"'
   local tail = '"}}}'
   local pad = target_body - (#pre + key_len + #mid + #tail)
   if pad < 0 then pad = 0 end
   return pre, mid .. string.rep("x", pad) .. tail
end

-- The full request for a key of length key_len, as three constant parts around the key,
-- which appears twice (header and body): req = a .. key .. b .. key .. c.
local function request_parts(key_len)
   local pre, post = body_parts(key_len)
   local len = #pre + key_len + #post
   local host = wrk.headers["Host"] or (wrk.host .. ":" .. tostring(wrk.port))
   local a = "POST " .. path .. " HTTP/1.1\r\n"
      .. "Host: " .. host .. "\r\n"
      .. "Content-Type: application/json\r\n"
      .. "Content-Length: " .. tostring(len) .. "\r\n"
      .. "Idempotency-Key: "
   local b = "\r\n\r\n" .. pre
   return a, b, post
end

local function new_request()
   counter = counter + 1
   local key = new_prefix .. string.format("%09d", counter)
   return new_a .. key .. new_b .. key .. new_c
end

local function request_impl()
   if mode == "new" then
      return new_request()
   elseif mode == "fill" then
      if counter < fill_count then
         local req = new_request()
         if counter == 1 then fill_first = req end
         return req
      end
      return fill_first
   elseif mode == "dup" then
      return hot_requests[math.random(hot_n)]
   elseif mode == "mix" then
      if math.random() < dup_share then
         return hot_requests[math.random(hot_n)]
      end
      return new_request()
   else -- warm: each hot key once, in order
      hot_next = hot_next + 1
      return hot_requests[((hot_next - 1) % hot_n) + 1]
   end
end

local function warm_step()
   if mode == "warm" then
      warm_seen = warm_seen + 1
      if warm_seen >= hot_n then wrk.thread:stop() end
   end
end

local function response_checked(status, headers, body)
   if status < 200 or status > 299 then
      non2xx_count = non2xx_count + 1
   end
   local r = headers["Idempotent-Replayed"] or headers["idempotent-replayed"]
   if r == "true" then
      replayed_count = replayed_count + 1
   end
   warm_step()
end

local function response_warm_only(status, headers, body)
   warm_step()
end

local function response_fill(status, headers, body)
   local replayed = headers["Idempotent-Replayed"] or headers["idempotent-replayed"]
   response_checked(status, headers, body)
   if status >= 200 and status <= 299 and replayed ~= "true" then
      fill_acked = fill_acked + 1
      if fill_acked == fill_count then
         if fill_done then
            local f = io.open(fill_done, "a")
            if f then
               f:write(string.format("thread %d: %d first-seen answers\n", thread_id or 0, fill_acked))
               f:close()
            end
         end
         wrk.thread:stop()
      end
   end
end

function init(args)
   args = args or {}
   mode = opt(args, "mode", "WEBHOOK_MODE", nil)
   local modes = { new = true, dup = true, mix = true, warm = true, fill = true }
   for _, a in ipairs(args) do
      if modes[a] then mode = a end
   end
   mode = mode or "new"
   if not modes[mode] then
      error("webhook.lua: unknown mode '" .. mode .. "' (new|dup|mix|warm|fill)")
   end
   run_id = opt(args, "run", "WEBHOOK_RUN_ID", default_run_id or "run")
   hot_prefix = opt(args, "hot", "WEBHOOK_HOT", "hot")
   hot_n = tonumber(opt(args, "hotn", "WEBHOOK_HOTN", "100"))
   dup_share = tonumber(opt(args, "dup", "WEBHOOK_DUP", "0.9"))
   path = opt(args, "path", "WEBHOOK_PATH", "/webhooks/bench")
   check = opt(args, "check", "WEBHOOK_CHECK", "0") == "1" or mode == "fill"
   target_body = tonumber(opt(args, "size", "WEBHOOK_SIZE", "1024"))
   fill_count = tonumber(opt(args, "count", "WEBHOOK_COUNT", "1000"))
   fill_done = opt(args, "done", "WEBHOOK_DONE", nil)

   local tid = thread_id or 0
   math.randomseed(os.time() * 1000 + tid * 7919)

   -- Hot requests are fully pre-built: a dup request costs one table lookup.
   for i = 0, hot_n - 1 do
      local key = string.format("%s-%03d", hot_prefix, i)
      local a, b, c = request_parts(#key)
      hot_requests[i + 1] = a .. key .. b .. key .. c
   end

   -- New keys have a fixed length per thread, so their framing is pre-built too.
   new_prefix = string.format("%s-t%d-", run_id, tid)
   new_a, new_b, new_c = request_parts(#new_prefix + 9)

   request = request_impl
   -- wrk skips header/body parsing for Lua when `response` is nil after init().
   if mode == "fill" then
      response = response_fill
   elseif check then
      response = response_checked
   elseif mode == "warm" then
      response = response_warm_only
   else
      response = nil
   end
end

-- ---------------------------------------------------------------- done phase (main env)
function done(summary, latency, requests)
   local secs = summary.duration / 1e6
   local rps = 0
   if secs > 0 then rps = summary.requests / secs end
   local e = summary.errors
   local sock_errors = e.connect + e.read + e.write + e.timeout
   local non2xx, replayed = e.status, -1
   local counted, mode_seen = false, "?"
   for _, t in ipairs(threads) do
      local m = t:get("mode")
      if m then mode_seen = m end
      if t:get("check") then
         if not counted then non2xx, replayed, counted = 0, 0, true end
         non2xx = non2xx + (t:get("non2xx_count") or 0)
         replayed = replayed + (t:get("replayed_count") or 0)
      end
   end
   io.write(string.format(
      "RESULT rps=%.2f p50_us=%d p99_us=%d non2xx=%d requests=%d errors=%d replayed=%d mode=%s\n",
      rps, latency:percentile(50.0), latency:percentile(99.0), non2xx, summary.requests,
      sock_errors, replayed, mode_seen))
end
