-- The checkpoint protocol shared by the census test scripts (see
-- tests/common/mod.rs): announce, block in io.read(0) -- which allocates
-- nothing, so gc.total does not move while ljleak looks -- then report the
-- GC total measured right after waking, and consume the newline.
local M = {}

function M.checkpoint(name, collect)
    if collect then collectgarbage() collectgarbage() end
    io.write("ready ", name, "\n")
    io.flush()
    io.read(0)
    local n = collectgarbage("count")
    io.write(string.format("total %.0f\n", n * 1024))
    io.flush()
    io.read("*l")
end

-- A trace recorded or exited around the wake-up would allocate between the
-- pause and the measurement; keep the checkpoint interpreted.
if jit then jit.off(M.checkpoint, true) end

-- Also callable directly: require("checkpoint")(name, collect).
return setmetatable(M, { __call = function(_, name, collect) return M.checkpoint(name, collect) end })
