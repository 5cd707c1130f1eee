-- GET BENCH_PATH with "Authorization: Bearer <token>", tokens from BENCH_TOKENS_FILE
-- (one per line). With one line every request repeats it. With many, each token is sent
-- once per pass over the file (each_line.lua: threads, BENCH_TOKEN_OFFSET).
local path = os.getenv("BENCH_PATH") or "/"
LINES_ENV = "BENCH_TOKENS_FILE"
function format_line(line)
  return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. line })
end
dofile(os.getenv("BENCH_LUA_DIR") .. "/each_line.lua")
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
