-- The checkpoint protocol of tests/common/mod.rs, shared by the test and
-- benchmark scripts: print `ready NAME`, block in io.read(0) (which
-- allocates nothing) until the test sends a newline, then print the GC
-- total measured right after waking. `collect` runs two full collections
-- first, so that everything left in the heap is live.
return function(name, collect)
    if collect then
        collectgarbage()
        collectgarbage()
    end
    io.write("ready ", name, "\n")
    io.flush()
    io.read(0)
    io.write(string.format("total %d\n", collectgarbage("count") * 1024))
    io.flush()
    io.read("*l")
end
