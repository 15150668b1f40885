-- wrk script for durable writes against intentd (POST /v1/intents) or etcd (POST /v3/kv/put
-- through its HTTP gateway), the same closed loop and the same ~200-byte value for both.
-- args (after --): mode ("intentd" or "etcd"), API key (intentd) or key prefix (etcd),
-- value bytes.
-- done() prints one WRKSTAT line with the latency quantiles that bench/compare.py merges
-- when several wrk processes drive several nodes at once.

local tcount = 0
function setup(thread)
  tcount = tcount + 1
  thread:set("tid", tcount)
end

local B = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local function at(shift) local k = math.floor(v / shift) % 64 + 1; return B:sub(k, k) end
    out[#out + 1] = at(262144) .. at(4096) .. (b and at(64) or "=") .. (c and at(1) or "=")
  end
  return table.concat(out)
end

local mode, secret, value, n = "intentd", "", "", 0
function init(args)
  mode = args[1] or "intentd"
  secret = args[2] or ""
  local bytes = tonumber(args[3] or "200")
  value = string.rep("v", bytes)
  if mode == "etcd" then value = base64(value) end
end

function request()
  n = n + 1
  if mode == "etcd" then
    local key = base64(string.format("%s/t%d/%09d", secret, tid or 0, n))
    return wrk.format("POST", "/v3/kv/put", { ["Content-Type"] = "application/json" },
      '{"key":"' .. key .. '","value":"' .. value .. '"}')
  end
  local corr = string.format("%08x-0000-4000-8000-%012x", tid or 0, n)
  local body = '{"intent_type":"intent.bench.create.v1","correlation_id":"' .. corr ..
    '","to_agent":"agent://bench/sink","payload":{"n":' .. n .. ',"pad":"' .. value .. '"}}'
  return wrk.format("POST", "/v1/intents",
    { ["Content-Type"] = "application/json", ["x-api-key"] = secret }, body)
end

function done(s, lat, _)
  local e = s.errors
  local q = {}
  for i = 1, 199 do q[#q + 1] = lat:percentile(i / 2) end
  q[#q + 1] = lat:percentile(99.9)
  q[#q + 1] = lat.max
  io.write(string.format(
    "WRKSTAT requests=%d duration_us=%d non2xx=%d sockerr=%d quantiles=%s\n",
    s.requests, s.duration, e.status, e.connect + e.read + e.write + e.timeout,
    table.concat(q, ",")))
end
