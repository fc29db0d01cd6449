-- A heap with a known retention graph (tests/refs.rs): package.loaded.mymod
-- is a module table whose function `get` has an upvalue `cache`, a table
-- holding N fixed-size cdata of SIZE bytes each. Nothing else refers to
-- the cache. Checkpoint protocol of tests/common/mod.rs.
-- Scripts find checkpoint.lua next to themselves.
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local checkpoint = require "checkpoint"
local ffi = require "ffi"
local N = tonumber(arg[1]) or 1000
local SIZE = tonumber(arg[2]) or 100

local function build()
    local M = {}
    local cache = {}
    local ctype = ffi.typeof("uint8_t[" .. SIZE .. "]")
    for i = 1, N do
        cache[i] = ctype()
    end
    function M.get(i)
        return cache[i]
    end
    package.loaded["mymod"] = M
    io.write("addr cache ", tostring(cache):match("0x%x+"), "\n")
end
build()

checkpoint("known", true)
