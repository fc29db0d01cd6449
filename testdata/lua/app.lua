-- The bundled demo / test app. `leak` reproduces the Kong 0.12.3 pattern in
-- miniature: a cache keyed by a fresh table on every request, each entry
-- holding FFI cdata, so nothing is ever found again and nothing is freed.
local ffi = require "ffi"

local M = {}

local kept = {}            -- /tables
local cache = {}           -- /leak: key = fresh table per request (never hit)

function M.tables(n)
    for _ = 1, n do kept[#kept + 1] = {} end
    ngx.say(#kept)
end

local function work(n)
    local bufs = {}
    for i = 1, n do
        local b = ffi.new("char[?]", 4096)
        ffi.fill(b, 4096, i % 256)
        bufs[i] = b
    end
    return bufs
end

function M.leak(n)
    local key = { uri = ngx.var.uri }     -- a fresh table every time
    cache[key] = work(n)
    local count = 0
    for _ in pairs(cache) do count = count + 1 end
    ngx.say(count)
end

function M.ok(n)
    local bufs = work(n)
    ngx.say(#bufs)
end

function M.reset()
    kept, cache = {}, {}
    collectgarbage()
    ngx.say("ok")
end

return M
