-- `ljleak mem --count` test: the GC heap grows ~2 MB every 0.1 s, nothing
-- else does. Prints "ready grow", then grows until killed.
local t = {}
io.write("ready grow\n")
io.flush()
while true do
    for _ = 1, 5000 do
        t[#t + 1] = string.rep("g", 300) .. #t
    end
    os.execute("sleep 0.1")
end
