-- GET BENCH_PATH with "Authorization: DPoP <BENCH_TOKEN>" and a fresh DPoP proof per
-- request, as real clients send: line i of BENCH_PROOFS_FILE (one proof per line, each made
-- for this method and URL). Thread i of BENCH_THREADS takes lines i, i + BENCH_THREADS, ...;
-- every proof is sent once (a second use would be a replay, refused). Requests are
-- formatted once, in init.
local path = os.getenv("BENCH_PATH") or "/"
local token = os.getenv("BENCH_TOKEN")
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end

local reqs = {}
local n, pos, step = 0, 0, 1
function init(args)
  for line in io.lines(os.getenv("BENCH_PROOFS_FILE")) do
    if line ~= "" then
      reqs[#reqs + 1] = wrk.format("GET", path, { ["Authorization"] = "DPoP " .. token,
                                                   ["DPoP"] = line })
    end
  end
  n = #reqs
  if n == 0 then
    error("no proofs in BENCH_PROOFS_FILE")
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
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
