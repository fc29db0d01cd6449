-- A big table held only by a local variable of the main chunk (tests/refs.rs:
-- refs names the stack slot by the local's name and declaration line).
-- Checkpoint protocol of tests/common/mod.rs.
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local checkpoint = require "checkpoint"
local N = tonumber(arg[1]) or 1000
local sessions = {}
for i = 1, N do
    sessions[i] = { id = i, payload = string.rep("x", 64) .. i }
end
io.write("addr sessions ", tostring(sessions):match("0x%x+"), "\n")
checkpoint("local", true)
-- Keeps `sessions` active until after the checkpoint.
io.write(#sessions, "\n")
