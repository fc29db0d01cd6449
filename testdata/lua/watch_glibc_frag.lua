-- `ljleak watch --mem` test: glibc's free chunks grow ~0.5 MB every 0.1 s
-- while the GC heap stays flat. Each round mallocs 100 pairs of chunks
-- through the FFI, then frees the first of each pair; the second is never
-- freed, so a freed chunk cannot coalesce. Chunks of 4 KiB and more stay
-- out of the tcache (at most 1032 bytes) and fastbins, and each round's
-- size is larger than the last, so no later request fits a freed chunk.
-- A full GC per round keeps the cdata garbage from moving the GC total.
-- Prints "ready frag", then grows until killed.
local ffi = require("ffi")
ffi.cdef [[
void *malloc(size_t);
void free(void *);
]]
collectgarbage()
io.write("ready frag\n")
io.flush()
local n = 100
local firsts = ffi.cast("void **", ffi.C.malloc(8 * n))
local size = 4096
while true do
    for i = 0, n - 1 do
        firsts[i] = ffi.C.malloc(size)
        ffi.C.malloc(size)
    end
    for i = 0, n - 1 do
        ffi.C.free(firsts[i])
    end
    size = size + 16
    collectgarbage()
    os.execute("sleep 0.1")
end
