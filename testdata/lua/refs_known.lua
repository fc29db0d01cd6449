-- A heap with a known retention graph (tests/refs.rs): package.loaded.mymod
-- is a module table whose function `get` has an upvalue `cache`, a table
-- holding N fixed-size cdata of SIZE bytes each. Nothing else refers to
-- the cache. Checkpoint protocol of tests/common/mod.rs.
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

local function checkpoint(name)
    collectgarbage()
    collectgarbage()
    io.write("ready ", name, "\n")
    io.flush()
    io.read(0)
    io.write(string.format("total %d\n", collectgarbage("count") * 1024))
    io.flush()
    io.read("*l")
end

checkpoint("known")
