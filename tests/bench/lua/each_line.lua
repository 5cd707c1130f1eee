-- One request per line of a file, each line sent once per pass: the body of bearer.lua,
-- dpop.lua and post_each_token.lua. The including script defines LINES_ENV (the
-- environment variable naming the file) and format_line(line) (the request for a line)
-- before `dofile`. Thread i of BENCH_THREADS starts at line i and steps by BENCH_THREADS, so
-- threads never send the same line; BENCH_TOKEN_OFFSET skips that many lines first.
-- Requests are formatted once, in init, so that the load generator spends no time on them.
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
  for line in io.lines(os.getenv(LINES_ENV)) do
    i = i + 1
    if i > offset and line ~= "" then
      reqs[#reqs + 1] = format_line(line)
    end
  end
  n = #reqs
  if n == 0 then
    error("no lines in " .. LINES_ENV)
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
