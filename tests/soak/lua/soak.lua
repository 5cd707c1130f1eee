-- Load of `make soak` (tests/soak/soak.py), one script for the streams that need more than
-- tests/bench/lua. SOAK_MODE:
--   bearer      GET BENCH_PATH with the tokens of BENCH_TOKENS_FILE in turn (bench's bearer.lua)
--   ratelimit   GET BENCH_PATH with the first token of BENCH_TOKENS_FILE and an "x-soak-key"
--               header: every other request the hot key "hot" (soon over its limit), the
--               others "k0" .. "k<SOAK_KEYS - 1>" in turn (buckets fill, then are evicted)
--   introspect  POST /oauth2/introspect, body "token=<line>", for the lines of
--               BENCH_TOKENS_FILE in turn, authenticated with BENCH_AUTH (the whole value)
-- Every answer is counted by kind: the status, plus the error_description (or error) of a
-- JSON error body ("401 token revoked"), and for introspection "200 active" / "200 inactive".
-- The counts of all threads are printed as one line WRK_STATUS {...} after report.lua's
-- WRK_JSON line (tests/bench/common.py run_wrk parses both).
local mode = os.getenv("SOAK_MODE") or "bearer"
dofile(os.getenv("BENCH_LUA_DIR") .. "/bearer.lua")

if mode == "ratelimit" then
  local auth = nil
  local nkeys = tonumber(os.getenv("SOAK_KEYS") or "1000")
  local path = os.getenv("BENCH_PATH") or "/"
  local n = 0
  function init(args)
    for line in io.lines(os.getenv("BENCH_TOKENS_FILE")) do
      if line ~= "" then
        auth = "Bearer " .. line
        break
      end
    end
    if auth == nil then
      error("no token in BENCH_TOKENS_FILE")
    end
    n = (id - 1) * 7919
  end
  function request()
    n = n + 1
    local key = "hot"
    if n % 2 == 1 then
      key = "k" .. (math.floor(n / 2) % nkeys)
    end
    return wrk.format("GET", path, { ["Authorization"] = auth, ["x-soak-key"] = key })
  end
elseif mode == "introspect" then
  local reqs = {}
  local n, pos, step = 0, 0, 1
  function init(args)
    local headers = {
      ["Authorization"] = os.getenv("BENCH_AUTH"),
      ["Content-Type"] = "application/x-www-form-urlencoded",
    }
    for line in io.lines(os.getenv("BENCH_TOKENS_FILE")) do
      if line ~= "" then
        -- tokens are base64url / "tg_at_..." text: nothing to percent-encode
        reqs[#reqs + 1] = wrk.format("POST", "/oauth2/introspect", headers, "token=" .. line)
      end
    end
    n = #reqs
    if n == 0 then
      error("no tokens in BENCH_TOKENS_FILE")
    end
    step = tonumber(os.getenv("BENCH_THREADS") or "1")
    pos = (id - 1) % n
  end
  function request()
    local r = reqs[pos + 1]
    pos = pos + step
    if pos >= n then
      pos = pos % n
    end
    return r
  end
end

local threads = {}
local bearer_setup = setup
function setup(thread)
  bearer_setup(thread)
  threads[#threads + 1] = thread
end

counts = {} -- global: read from the main state with thread:get("counts")
function response(status, headers, body)
  local k = tostring(status)
  body = body or ""
  if status == 200 then
    if mode == "introspect" then
      if string.find(body, '"active":true', 1, true) then
        k = "200 active"
      else
        k = "200 inactive"
      end
    end
  elseif status >= 400 then
    local d = string.match(body, '"error_description":"([^"\\]*)"')
      or string.match(body, '"error":"([^"\\]*)"')
    if d then
      k = k .. " " .. d
    end
  end
  counts[k] = (counts[k] or 0) + 1
end

local report_done = done
function done(summary, latency, requests)
  report_done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    if c then
      for k, v in pairs(c) do
        total[k] = (total[k] or 0) + v
      end
    end
  end
  local parts = {}
  for k, v in pairs(total) do
    parts[#parts + 1] = string.format('"%s":%d', k, v)
  end
  io.write("WRK_STATUS {" .. table.concat(parts, ",") .. "}\n")
end
