-- Memory shapes for `ljleak watch` tests (tests/compare.rs):
--   grow       keeps ~200 KB more every 100 ms, for the whole run
--   saturate   the same for the first SECS seconds, then holds steady
--   flat       allocates nothing
-- usage: luajit watch_trend.lua MODE [SECS]; prints `ready MODE`, starts
-- its clock and loop on a line from stdin (or EOF), runs until killed.
local ffi = require "ffi"
ffi.cdef "struct wt_timespec { long s; long ns; }; int usleep(unsigned int usec); int clock_gettime(int clk, struct wt_timespec *ts);"
jit.off()
local mode, secs = arg[1], tonumber(arg[2] or "1.5")
local ts = ffi.new("struct wt_timespec")
local function now()
    ffi.C.clock_gettime(1, ts)
    return tonumber(ts.s) + tonumber(ts.ns) / 1e9
end
local keep, n = {}, 0
local pad = string.rep("x", 1000)
io.write("ready ", mode, "\n")
io.flush()
io.read("*l")
local t0 = now()
while true do
    if mode == "grow" or (mode == "saturate" and now() - t0 < secs) then
        for _ = 1, 200 do
            n = n + 1
            keep[n] = pad .. n
        end
    end
    ffi.C.usleep(100000)
end
