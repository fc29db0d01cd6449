-- A count hook that blocks: the hook's caller is a Lua function whose PC
-- only the interpreter's C frame holds (lj_debug.c debug_framepc's C-frame
-- walk). Prints `tb hook ...` (debug.traceback from the hook, newlines as
-- `|`) and `ready hook`, then blocks reading stdin inside the hook.
if jit then jit.off() end  -- count hooks do not run in compiled code

local function flat(s)
    return (s:gsub("\n", "|"):gsub("\t", ""))
end

local function busy(n)
    local x = 0
    for i = 1, n do
        x = x + i % 7                 -- line 14: the hook interrupts this loop
    end
    return x
end

debug.sethook(function()
    debug.sethook()
    local tb = flat(debug.traceback("", 1)); print("tb hook " .. tb); print("ready hook"); io.stdout:flush(); io.read(0) -- line 21
end, "", 1000)
print(busy(1e7))                      -- line 23
io.read(1)
