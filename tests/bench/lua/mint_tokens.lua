-- Mint access tokens with the token request of form_post.lua (BENCH_BODY, BENCH_AUTH,
-- BENCH_PATH) and append the access_token of every 200 answer to
-- "<BENCH_MINT_PREFIX>.<thread number>", one per line: each thread has its own file.
wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/"
wrk.body = os.getenv("BENCH_BODY") or ""
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")

local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end

local out = nil
function init(args)
  out = io.open(os.getenv("BENCH_MINT_PREFIX") .. "." .. id, "w")
end

function response(status, headers, body)
  if status == 200 then
    local token = string.match(body, '"access_token"%s*:%s*"([^"]+)"')
    if token then
      out:write(token, "\n")
      out:flush()
    end
  end
end
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
