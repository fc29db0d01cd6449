-- The Kong bot-detection leak in miniature (tests/refs.rs): the handler
-- module keeps `ua_caches`, a weak-keyed table keyed by a fresh conf table
-- per call, each value an lrucache (lua-resty-lrucache) holding cdata.
-- The plugin iterator module keeps every conf alive, so no entry is ever
-- cleared: the caches pile up. Checkpoint protocol of tests/common/mod.rs.
-- Scripts find checkpoint.lua next to themselves.
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local checkpoint = require "checkpoint"
package.path = "/usr/share/lua/5.1/?.lua;" .. package.path
-- Outside nginx: lrucache only needs ngx.now.
ngx = { now = os.time }
local lrucache = require "resty.lrucache"
local ffi = require "ffi"
local CALLS = tonumber(arg[1]) or 200

local function load_modules()
    local iterator = { configs = {} }
    function iterator.new_conf()
        local conf = { ua = "curl" }
        iterator.configs[#iterator.configs + 1] = conf
        return conf
    end
    package.loaded["kong.runloop.plugins_iterator"] = iterator

    local ua_caches = setmetatable({}, { __mode = "k" })
    local handler = {}
    function handler.access(conf)
        local cache = ua_caches[conf]
        if not cache then
            cache = lrucache.new(100)
            ua_caches[conf] = cache
        end
        for i = 1, 10 do
            cache:set("agent" .. i, ffi.new("uint8_t[64]"))
        end
    end
    package.loaded["kong.plugins.bot-detection.handler"] = handler
end
load_modules()

local function run()
    local iterator = require "kong.runloop.plugins_iterator"
    local handler = require "kong.plugins.bot-detection.handler"
    for _ = 1, CALLS do
        handler.access(iterator.new_conf())
    end
    local first = iterator.configs[1]
    io.write("addr conf ", tostring(first):match("0x%x+"), "\n")
end
run()

checkpoint("kong", true)
