-- POST BENCH_PATH with the form body "token=<line>" for each line of BENCH_TOKENS_FILE,
-- Authorization BENCH_AUTH (the whole value): RFC 7009 revocation of many tokens, each
-- once per pass (each_line.lua: threads, BENCH_TOKEN_OFFSET).
local path = os.getenv("BENCH_PATH") or "/"
local headers = { ["Authorization"] = os.getenv("BENCH_AUTH") or "",
                  ["Content-Type"] = "application/x-www-form-urlencoded" }
LINES_ENV = "BENCH_TOKENS_FILE"
function format_line(line)
  return wrk.format("POST", path, headers, "token=" .. line)
end
dofile(os.getenv("BENCH_LUA_DIR") .. "/each_line.lua")
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
