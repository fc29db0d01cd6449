-- The Kong pattern for `ljleak leaks` (tests/leaks_lua.rs): a module keeps
-- one resty.lrucache.pureffi cache per conf table, and every call brings a
-- fresh conf, so caches pile up. Their bytes come from ffi.new inside
-- pureffi.lua; the leak's cause is the application's lrucache.new line and
-- its caller. Prints `ready`, waits for a line, makes CALLS calls, prints
-- `done`, waits for EOF.
package.path = "/usr/share/lua/5.1/?.lua;" .. package.path
ngx = { now = os.time } -- lrucache only needs ngx.now outside nginx
local lrucache = require "resty.lrucache.pureffi"
local CALLS = tonumber(arg[1]) or 300

local caches = setmetatable({}, { __mode = "k" })
local confs = {}

local function get_cache(conf)
    local c = caches[conf]
    if not c then
        c = lrucache.new(64) -- APP NEW LINE
        caches[conf] = c
    end
    return c
end

local function handle(conf)
    local c = get_cache(conf) -- APP CALLER LINE
    c:set("ua", conf.ua)
    return c:get("ua")
end

io.write("ready\n")
io.flush()
io.read("*l")
for i = 1, CALLS do
    local conf = { ua = "curl/" .. i }
    confs[#confs + 1] = conf
    handle(conf)
end
io.write("done\n")
io.flush()
io.read("*a")
