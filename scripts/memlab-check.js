#!/usr/bin/env node
// Loads a .heapsnapshot with memlab's heap-analysis API (the consumer the
// format is tested against) and prints, as one JSON object, what memlab
// computed: node and edge counts, the root's retained size, every node's
// retained size by id, and the retainer path (edge names from the root) of
// the node ids given after the file. Used by tests/heapsnapshot.rs.
//
// usage: NODE_PATH=/var/cache/ljleak/memlab/node_modules node memlab-check.js FILE [ID...]
'use strict';
const {getFullHeapFromFile} = require('@memlab/heap-analysis');

function edgeName(e) {
  return e.type === 'element' ? `[${e.name_or_index}]` : String(e.name_or_index);
}

(async function main() {
  const [file, ...ids] = process.argv.slice(2);
  const heap = await getFullHeapFromFile(file);
  const out = {nodes: 0, edges: 0, weak_edges: 0, root_retained: 0, retained: {}, names: {}, paths: {}};
  heap.nodes.forEach(node => {
    out.nodes++;
    out.edges += node.edge_count;
    node.references.forEach(e => {
      if (e.type === 'weak') out.weak_edges++;
    });
    if (node.nodeIndex === 0) {
      out.root_retained = node.retainedSize;
    }
    if (node.type !== 'synthetic') {
      out.retained[node.id] = node.retainedSize;
      out.names[node.id] = node.name;
    }
  });
  for (const id of ids) {
    const node = heap.getNodeById(Number(id));
    if (!node) {
      out.paths[id] = null;
      continue;
    }
    const path = [];
    let cur = node;
    for (let guard = 0; cur && cur.pathEdge && guard < 10000; guard++) {
      path.unshift(edgeName(cur.pathEdge));
      cur = cur.pathEdge.fromNode;
    }
    out.paths[id] = path;
  }
  process.stdout.write(JSON.stringify(out) + '\n');
})().catch(err => {
  process.stderr.write(`memlab-check: ${err && err.stack || err}\n`);
  process.exit(1);
});
