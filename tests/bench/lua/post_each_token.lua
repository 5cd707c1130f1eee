-- POST BENCH_PATH with the form body "token=<line>" for each line of BENCH_TOKENS_FILE,
-- Authorization BENCH_AUTH (the whole value): RFC 7009 revocation of many tokens. Thread i
-- of BENCH_THREADS takes lines i, i + BENCH_THREADS, ...; BENCH_TOKEN_OFFSET skips lines.
local path = os.getenv("BENCH_PATH") or "/"
local auth = os.getenv("BENCH_AUTH") or ""
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
  local headers = { ["Authorization"] = auth,
                    ["Content-Type"] = "application/x-www-form-urlencoded" }
  for line in io.lines(os.getenv("BENCH_TOKENS_FILE")) do
    i = i + 1
    if i > offset and line ~= "" then
      reqs[#reqs + 1] = wrk.format("POST", path, headers, "token=" .. line)
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
