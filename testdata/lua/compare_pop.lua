-- Known populations for tests/compare.rs: at checkpoint `before` nothing
-- extra; at `after` 2000 more empty tables and 300 more uint8_t[100] cdata,
-- all reachable. Checkpoint protocol as in tests/common (LuaProc).
jit.off()
local ffi = require "ffi"
local keep = {}

local function checkpoint(name)
    collectgarbage()
    collectgarbage()
    io.write("ready ", name, "\n")
    io.flush()
    io.read(0)
    io.read("*l")
    io.write("total ", string.format("%.0f", collectgarbage("count") * 1024), "\n")
    io.flush()
end

-- Pre-size the holder so its growth does not move tables between size classes.
for i = 1, 4000 do keep[i] = false end
checkpoint("before")
for i = 1, 2000 do keep[i] = {} end
for i = 2001, 2300 do keep[i] = ffi.new("uint8_t[100]") end
checkpoint("after")
io.read("*a")
