-- Never blocks: keeps the interpreter (or a trace) running and allocating,
-- so a pause always lands in user code.
local t = {}
io.write("ready busy\n")
io.flush()
local i = 0
while true do
    i = i + 1
    if i % 1000 == 0 then t[#t % 100 + 1] = { i } end
end
