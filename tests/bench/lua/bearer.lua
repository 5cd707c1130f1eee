-- GET BENCH_PATH with "Authorization: Bearer <token>", tokens from BENCH_TOKENS_FILE
-- (one per line). With one line every request repeats it. With many, thread i of
-- BENCH_THREADS starts at line i and steps by BENCH_THREADS, so threads never send the
-- same token and each token is sent once per pass over the file. BENCH_TOKEN_OFFSET
-- skips that many lines first. Requests are formatted once, in init, so that the load
-- generator spends no time building them.
local path = os.getenv("BENCH_PATH") or "/"
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end

local reqs = {}
local n, pos, step = 0, 0, 1
function init(args)
  local offset = tonumber(os.getenv("BENCH_TOKEN_OFFSET") or "0")
  local i = 0
  for line in io.lines(os.getenv("BENCH_TOKENS_FILE")) do
    i = i + 1
    if i > offset and line ~= "" then
      reqs[#reqs + 1] = wrk.format("GET", path, { ["Authorization"] = "Bearer " .. line })
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
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
