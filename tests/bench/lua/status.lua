-- bearer.lua (same requests, same token order) plus a count of the answers by status,
-- printed as one line "WRK_STATUS {"200":n,"429":m,...}" after report.lua's WRK_JSON line,
-- so that a run where most answers are meant to be refused (rate limit) can show what
-- they were. Defining response() costs wrk a Lua call per answer: use this script on
-- every side of a comparison.
dofile(os.getenv("BENCH_LUA_DIR") .. "/bearer.lua")

local threads = {}
local bearer_setup = setup
function setup(thread)
  bearer_setup(thread)
  threads[#threads + 1] = thread
end

counts = {}  -- global: read from the main state with thread:get("counts")
function response(status, headers, body)
  local k = tostring(status)
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
