-- Blocks inside a __gc finalizer, so the census runs with the GC in its
-- finalize state and objects still waiting on g->gc.mmudata.
-- usage: luajit census_finalize.lua TESTDATA_DIR
package.path = arg[1] .. "/lua/?.lua;" .. package.path
local cp = require("checkpoint").checkpoint
local ffi = require "ffi"

local blocked = false
local function fin()
    if not blocked then
        blocked = true
        cp("finalizing", false)
    end
end
do
    local t = {}
    for i = 1, 25 do
        local p = newproxy(true)
        getmetatable(p).__gc = fin
        t[#t + 1] = p
        t[#t + 1] = ffi.gc(ffi.new("int[4]"), fin)
    end
end
collectgarbage()
io.write("done\n")
io.flush()
io.read("*l")
